"""Where a gradual walk of latency plans thins a network: the widths each step leaves and the accuracy after a short
recovery, with the channel floors a job uses (`--floors job`: `min_keep` of the walk's first widths and `step_keep`
of each step's) or with `min_keep` counted in each step's own widths and no step share (`--floors per-step`).
Quick (short baseline, one recovery epoch, no Torch-Pruning lane): it shows a plan's shape, not a budget result;
bench/speed_budget.py is that. Writes bench/results/latency_walk_<floors>.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/latency_walk.py --floors job
    OMP_NUM_THREADS=1 .venv/bin/python bench/latency_walk.py --floors per-step
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_result  # noqa: E402
from speed import NETWORKS, train, workload  # noqa: E402
from speed_budget import plan_like_a_job  # noqa: E402

from squeezer.core.config import LatencyPruning  # noqa: E402
from squeezer.core.measure import metric_function  # noqa: E402
from squeezer.core.methods.latency_pruning import producer_widths  # noqa: E402

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def _shape(pruned: torch.nn.Module, widths: dict[str, int]) -> dict:
    """The kept share of each convolution's channels: the narrowest few and the quantiles."""
    shares = sorted((width / widths[name], name) for name, width in producer_widths(pruned).items())
    return {
        "narrowest": [[name, round(share, 3)] for share, name in shares[:6]],
        "share_quantiles": [round(shares[int(q * (len(shares) - 1))][0], 3) for q in QUANTILES],
    }


def walk(args) -> dict:
    work = workload(args.network, False, 128)
    score = metric_function(work.metric)
    train(work.module, work, args.epochs, seed=0)
    base = work.module.eval()
    baseline = score(base, work.x_val, work.y_val)
    widths, defaults = producer_widths(base), LatencyPruning()  # the job's floors count in `widths`
    job_floors = args.floors == "job"
    start, reached, steps = base, 1.0, []
    for target in args.targets:
        floors = {} if job_floors else {"widths": None, "step_keep": 0.0}
        pruned, _, plan = plan_like_a_job(
            start, work, target / reached, score, baseline - defaults.block_drop, **floors
        )
        reached *= plan.measured_speedup or plan.predicted_speedup
        train(pruned, work, args.recovery_epochs, seed=1, teacher=base)
        accuracy = score(pruned.eval(), work.x_val, work.y_val)
        step = {"target": target, "reached": round(reached, 2), "accuracy": round(accuracy, 2)}
        step |= {"blocks": [block.name for block in plan.blocks], **_shape(pruned, widths)}
        print(f"[{time.strftime('%H:%M:%S')}] {step}", flush=True)
        steps.append(step)
        start = pruned
    return {"baseline": round(baseline, 2), "epochs": args.epochs, "recovery_epochs": args.recovery_epochs} | {
        "steps": steps
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="resnet56", choices=NETWORKS)
    parser.add_argument("--floors", choices=["job", "per-step"], default="job", help="see the module docstring")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--epochs", type=int, default=4, help="baseline training epochs")
    parser.add_argument("--recovery-epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    result = walk(args)
    result["run"] = {"command": " ".join(sys.argv), "machine": machine(), "seconds": round(time.monotonic() - started)}
    print(f"wrote {write_result(f'latency_walk_{args.floors}', result)}")


if __name__ == "__main__":
    main()
