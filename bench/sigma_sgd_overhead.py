"""Engine overhead of σ-constrained SGD: one training step of LeNet-5 (28×28, batch 128) with every prunable layer
ternary-constrained exactly as `core.methods.lwct.build_working_module` builds it (shadow weights, masks and σ, from
which the optimizer step's rule computes the weights) against a plain SGD step on the same weights and
batch. `--model resnet56` times a 57-layer network instead (14×14, batch 64), where per-layer costs show. Steps of
the variants alternate (the order shuffled every round) so drift in the machine hits them alike; medians are
compared. The masked-float variant (the pruning stage) is timed beside them. Target: σ-SGD / plain ≤ 1.05. Writes
bench/results/sigma_sgd_overhead.json (sigma_sgd_overhead_resnet56.json).

    .venv/bin/python bench/sigma_sgd_overhead.py [--model lenet5|resnet56] [--rounds 400] [--sparsity 0.9]
        [--profile] [--quick]
"""

import argparse
import os
import random
import statistics
import time

import torch
from _common import lenet5, machine, write_result
from torch import nn

from squeezer.core.intake.registry import CifarResNet
from squeezer.core.methods.lwct import build_working_module, global_magnitude_masks, prunable_layers, shadow_state
from squeezer.core.train import optimizer_for

TARGET = 1.05
# model → (constructor, input side, batch)
MODELS = {"lenet5": (lenet5, 28, 128), "resnet56": (lambda: CifarResNet(56, in_channels=1), 14, 64)}
SPARSITY = 0.9  # a typical level reached by the pruning stage (the reference job's is 0.93); --sparsity changes it


def variants(model: str, seed: int, sparsity: float = SPARSITY) -> dict[str, nn.Module]:
    """plain, masked (pruning stage) and sigma (all layers constrained) modules holding the same weights."""
    torch.manual_seed(seed)
    plain = MODELS[model][0]()
    shadow = shadow_state(plain)
    masks = global_magnitude_masks({n: layer.weight for n, layer in prunable_layers(plain).items()}, sparsity)
    return {
        "plain": plain,
        "masked": build_working_module(plain, shadow, masks, {}),
        "sigma": build_working_module(plain, shadow, masks, dict.fromkeys(masks)),
    }


def make_step(module: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One step exactly as core.train.fit takes it on CPU: zero_grad, forward, cross-entropy, backward, SGD
    (core.train.optimizer_for, the same optimizer and step rule)."""
    module.train()
    optimizer = optimizer_for(module, lr=0.01, momentum=0.9, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(module(x), y).backward()
        optimizer.step()

    return step


def time_interleaved(steps: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    shuffler = random.Random(0)
    for _ in range(rounds):
        shuffler.shuffle(names)
        for name in names:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def profile(step, label: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(10):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(50):
            step()
    print(f"\n--- {label}: 50 steps, by self CPU time ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--sparsity", type=float, default=SPARSITY, help="the masks' global sparsity: σ-SGD steps the kept weights only"
    )
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of the plain and σ steps")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 rounds, nothing written")
    args = parser.parse_args()
    rounds, warmup = (20, 3) if args.quick else (args.rounds, args.warmup)

    _, side, batch = MODELS[args.model]
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, 1, side, side, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
    modules = variants(args.model, seed=0, sparsity=args.sparsity)
    layers = len(prunable_layers(modules["plain"]))
    steps = {name: make_step(module, x, y) for name, module in modules.items()}
    times = time_interleaved(steps, rounds, warmup)
    medians_ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    minimums_ms = {name: 1000 * min(t) for name, t in times.items()}  # least disturbed by other load on the machine
    paired = {
        name: statistics.median(a / b for a, b in zip(times[name], times["plain"], strict=False))
        for name in ("masked", "sigma")
    }
    ratio = medians_ms["sigma"] / medians_ms["plain"]

    print(f"{'variant':<8} {'median ms/step':>15} {'vs plain':>9} {'paired median':>14} {'min ms':>8} {'vs plain':>9}")
    for name, ms in medians_ms.items():
        print(
            f"{name:<8} {ms:>15.3f} {ms / medians_ms['plain']:>9.3f} {paired.get(name, 1.0):>14.3f} "
            f"{minimums_ms[name]:>8.3f} {minimums_ms[name] / minimums_ms['plain']:>9.3f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"σ-SGD / plain SGD = {ratio:.3f} (target ≤ {TARGET}) -> {'PASS' if ratio <= TARGET else 'FAIL'}")

    if args.profile:
        profile(steps["plain"], "plain")
        profile(steps["sigma"], "sigma")
    if args.quick:
        return
    name = "sigma_sgd_overhead" if args.model == "lenet5" else f"sigma_sgd_overhead_{args.model}"
    path = write_result(
        name if args.sparsity == SPARSITY else f"{name}_sparsity{args.sparsity:g}",
        {
            "benchmark": "σ-constrained SGD step vs plain SGD step",
            "setup": (
                f"{args.model} {side}x{side}, batch {batch}, CPU; all {layers} prunable layers σ-constrained by "
                f"lwct.build_working_module (masks at global sparsity {args.sparsity}); "
                "'masked' = every layer a pruned float layer (the pruning stage); "
                f"{rounds} rounds after {warmup} warm-up rounds, one step per variant per round in shuffled order"
            ),
            "machine": machine(),
            "median_ms_per_step": {k: round(v, 4) for k, v in medians_ms.items()},
            "ratio_sigma_over_plain": round(ratio, 4),
            "ratio_masked_over_plain": round(medians_ms["masked"] / medians_ms["plain"], 4),
            "paired_median_ratio": {k: round(v, 4) for k, v in paired.items()},
            "min_ms_per_step": {k: round(v, 4) for k, v in minimums_ms.items()},
            "ratio_of_minimums_sigma_over_plain": round(minimums_ms["sigma"] / minimums_ms["plain"], 4),
            "load_average_1min_at_end": os.getloadavg()[0],
            "target": TARGET,
            "pass": ratio <= TARGET,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
