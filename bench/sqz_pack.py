"""Time to pack a `.sqz` file, builds side by side: every lwct stage packs its candidate to measure the ratio, so on a
large network packing is part of each stage's wall time (and the whole of it on a GPU worker, whose CPU packs while
the GPU waits). Networks: torchvision ResNet-18 (11.7M parameters, 21 layers) and RegNetX-400MF (5.5M, 276 tensors),
random weights pruned to 90 %, every third layer ternary and the rest sparse on int8, float16 and int5 grids, as
lwct leaves them; and LeNet-5 (61k). Each build packs in its own process; builds alternate round by round, medians
are compared, and so are the packed bytes (identical across builds that share a layout).
Writes bench/results/sqz_pack.json.

    .venv/bin/python bench/sqz_pack.py [--builds cfd1bb9,WORKTREE] [--rounds 3] [--name sqz_pack]

A build is a git revision (its tree exported with `git archive`) or WORKTREE (this checkout).
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import WORKTREE, build_tree, machine, write_result

NETWORKS = ("resnet18", "regnet_x_400mf", "lenet5")

# Runs inside a build's tree: packs one network and prints its seconds, bytes and digest. Uses only what every
# build since the engine landed has (pack_sqz(model, layers), round_for_storage, the lwct helpers).
_PACK_ONE = """
import hashlib, json, sys, time, torch
from torchvision import models
from squeezer.core.artifacts.sqz import pack_sqz, round_for_storage
from squeezer.core.intake.models import LoadedModel
from squeezer.core.intake.registry import build_architecture
from squeezer.core.methods.lwct import global_magnitude_masks, prunable_layers
from squeezer.core.methods.results import LayerState

arch = sys.argv[1]
torch.manual_seed(0)
if arch == "lenet5":
    module, shape = build_architecture("lenet5", {}), (1, 28, 28)
else:
    module, shape = models.get_model(arch, weights=None, num_classes=10).eval(), (3, 32, 32)
layers = prunable_layers(module)
masks = global_magnitude_masks({name: layer.weight for name, layer in layers.items()}, 0.9)
rows = []
with torch.no_grad():
    for i, (name, layer) in enumerate(layers.items()):
        weight, sigma = layer.weight * masks[name], None
        if i % 3 == 0 and masks[name].any():
            weight = torch.sign(weight) * weight[masks[name]].abs().mean()
            sigma, representation = float(weight.abs().max()), "ternary"
        else:
            weight, representation = round_for_storage(weight, ["int8", "float16", "int5"][i % 3]), "sparse-float"
        layer.weight.copy_(weight)
        rows.append(LayerState(name, type(layer).__name__, list(weight.shape), weight.numel(), 0.9, representation,
                               sigma, 0.0, i, True))
model = LoadedModel(module, {"name": arch, "args": {}}, "squeezer", shape, 10, None, None)
started = time.perf_counter()
data = pack_sqz(model, rows)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
"""


def pack_once(tree: Path, network: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PACK_ONE, network], cwd=tree, check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", default=f"cfd1bb9,{WORKTREE}", help="comma-separated git revisions or WORKTREE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="sqz_pack", help="results file: bench/results/<name>.json")
    args = parser.parse_args()
    builds = args.builds.split(",")
    runs: dict[tuple[str, str], list[dict]] = {(b, n): [] for b in builds for n in NETWORKS}
    order = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="squeezer-builds-") as tmp:
        trees = {build: build_tree(build, Path(tmp)) for build in builds}
        for _ in range(args.rounds):
            for network in NETWORKS:
                for build in order.sample(builds, len(builds)):
                    runs[build, network].append(pack_once(trees[build], network))
    previous, current = builds[0], builds[-1]
    results = {}
    for network in NETWORKS:
        digests = {run["sha256"] for build in builds for run in runs[build, network]}
        medians = {build: statistics.median(run["seconds"] for run in runs[build, network]) for build in builds}
        results[network] = {
            "median_seconds": {build: round(seconds, 3) for build, seconds in medians.items()},
            "bytes": {build: runs[build, network][0]["bytes"] for build in builds},
            "identical_bytes": len(digests) == 1,
            "speedup": round(medians[previous] / medians[current], 2),
        }
        sizes = results[network]["bytes"]
        print(
            f"{network:<16} "
            + "  ".join(f"{build} {seconds:.2f} s" for build, seconds in medians.items())
            + f"  -> {results[network]['speedup']}x faster; bytes "
            + "  ".join(f"{build} {size:,}" for build, size in sizes.items())
            + f" ({sizes[previous] / sizes[current]:.3f}x), identical: {len(digests) == 1}"
        )
    path = write_result(
        args.name,
        {
            "benchmark": "pack_sqz wall time, builds side by side",
            "setup": (
                "random weights pruned to 90 %, every third layer ternary, the rest sparse on int8/float16/int5 grids; "
                f"one process per pack, {args.rounds} rounds, builds alternating; median seconds"
            ),
            "machine": machine(),
            "builds": builds,
            "networks": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
