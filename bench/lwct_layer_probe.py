"""Why lwct stops where it does on the reference workload: from the last accepted state of a reference run, the next
convolution (`features.3`) is σ-constrained under several training variants, and each variant's top-1 is measured.
If one variant kept the layer within the budget, it would be a better default; none has so far (README).

The reference run is lwct with the bench's settings and on_violation=stop, checkpointed to a cache directory (a
rerun reuses it). Each variant trains as one ternary step does (same seed, cosine schedule, distillation from the
baseline), changing one thing: epochs, learning rate, distillation weight, the layer's mask (all weights allowed
back: "dense"), or the already constrained layers left in float ("alone"). Writes bench/results/lwct_layer_probe.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lwct_layer_probe.py [--layer features.3]
"""

import argparse
import time

import torch
from _common import machine, write_result

from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.intake.data import load_dataset, normalize
from squeezer.core.intake.models import load_model
from squeezer.core.measure import top1_accuracy
from squeezer.core.methods import lwct
from squeezer.core.samples import cache_root, ensure_sample_model
from squeezer.core.train import fit

SETTINGS = {
    "epochs_per_step": 3,
    "prune_epochs": 3,
    "sparsity_grid": [0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95],
    "distill": 0.5,
    "lr": 0.05,
    "on_violation": "stop",
}
VARIANTS = {
    "as in the run (3 epochs, lr 0.05, distill 0.5)": {},
    "8 epochs": {"epochs": 8},
    "lr 0.01": {"lr": 0.01},
    "distill 0.9": {"distill": 0.9},
    "dense mask": {"dense": True},
    "alone (earlier ternary layers back in float)": {"alone": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", default="features.3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(ensure_sample_model("fashion-mnist")[0])
    data = normalize(load_dataset("sample:fashion-mnist"), model.preprocessing)
    config = CompressConfig(target=AccuracyTarget(max_drop=1.0), device="cpu", lwct=LwctConfig(**SETTINGS))
    checkpoint = cache_root() / "bench" / "lwct-layer-probe"
    if not (checkpoint / "lwct.json").exists():
        lwct.compress_lwct(model, data, config, checkpoint_dir=checkpoint)
    run = lwct.LwctRun(model, data, config, checkpoint_dir=checkpoint)
    if run.resume_walk() is None:
        raise SystemExit(f"no lwct checkpoint in {checkpoint}")
    state, shadow, masks = run.best, run.best.shadow, run.best.masks
    baseline = top1_accuracy(model.module, data.x_val, data.y_val)
    print(f"baseline {baseline:.2f} %; accepted state {state.accuracy:.2f} % with {sorted(state.sigmas)} ternary")
    results = {}
    for name, variant in VARIANTS.items():
        started = time.perf_counter()
        sigmas = {} if variant.get("alone") else dict(state.sigmas)
        layer_masks = {**masks, args.layer: torch.ones_like(masks[args.layer])} if variant.get("dense") else masks
        module = lwct.build_working_module(run.base, shadow, layer_masks, {**sigmas, args.layer: None})
        fit(
            module,
            data.x_train,
            data.y_train,
            epochs=variant.get("epochs", SETTINGS["epochs_per_step"]),
            lr=variant.get("lr", SETTINGS["lr"]),
            momentum=0.9,
            batch_size=128,
            seed=config.seed + 1000,
            lr_schedule="cosine",
            teacher=run.base,
            distill_weight=variant.get("distill", SETTINGS["distill"]),
        )
        accuracy = top1_accuracy(run.plain(module), data.x_val, data.y_val)
        results[name] = {
            "accuracy": accuracy,
            "drop_from_baseline": baseline - accuracy,
            "wall_s": time.perf_counter() - started,
        }
        print(f"{name:<48} {accuracy:6.2f} %  drop {baseline - accuracy:5.2f}", flush=True)
    path = write_result(
        "lwct_layer_probe",
        {
            "benchmark": f"lwct: σ-constraining {args.layer} after the reference run's last accepted step",
            "machine": machine(),
            "baseline_accuracy": baseline,
            "settings": SETTINGS,
            "accepted_state": {"accuracy": state.accuracy, "ternary": sorted(state.sigmas)},
            "layer": args.layer,
            "variants": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
