"""Data larger than memory: peak memory and training throughput of the streaming intake (uint8 kept as
stored, an uncompressed .npz member memory-mapped, conversion per batch) against the in-memory path (every
split expanded to float32 up front), side by side on the same .npz, each in a fresh process.

The streaming path also runs on a data set `--large` times as big, which the in-memory path is not asked to hold.
The image-folder case (`--cases folder`) trains on a folder of JPEGs read lazily (headers at intake, decoded per batch
by DataLoader workers) against the same folder decoded up front into one uint8 array; worker_private_mb is the
workers' own memory at the end of training (private dirty pages: what a fork shares with the training process is
not counted twice).
peak_rss_mb counts the pages of the memory map that training touched (file-backed, reclaimable page cache) as well;
anonymous_rss_mb_after is the process's own memory.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/data_streaming.py [--samples 30000 --size 64 --steps 60 --large 4]
[--cases npz,folder --folder-samples 4000 --folder-size 128]
Writes bench/results/data_streaming.json (a case not run keeps its earlier figures there).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, path: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch
    from torch import nn

    from squeezer.core.intake.data import Samples, load_dataset
    from squeezer.core.train import fit

    torch.manual_seed(0)
    started = time.perf_counter()
    if mode in ("streaming", "folder-lazy", "folder-decoded"):
        data = load_dataset(path)
        x, y = data.x_train, data.y_train
        if mode == "folder-decoded":  # what intake did before: every image decoded up front into one uint8 array
            x = Samples(x.stored[:], channels_last=True)
    else:  # what intake did before: the whole split as float32 in memory
        with np.load(path) as archive:
            x = torch.from_numpy(archive["x_train"].astype(np.float32) / 255.0)
            y = torch.from_numpy(archive["y_train"].astype(np.int64))
    loaded = time.perf_counter() - started
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    batch = 128
    started = time.perf_counter()
    workers = []  # read while the DataLoader workers are still up: at the end of the (only) epoch
    fit(
        model,
        x,
        y,
        epochs=1,
        lr=0.01,
        batch_size=batch,
        max_samples=steps * batch,
        on_epoch=lambda epoch, loss: workers.extend(_children_private_mb()),
    )
    seconds = time.perf_counter() - started
    status = _status("self")
    return {
        "mode": mode,
        "workers": len(workers),
        "worker_private_mb": sum(workers),
        "load_s": loaded,
        "train_samples_per_s": steps * batch / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anonymous_rss_mb_after": int(status["RssAnon"].split()[0]) / 1024,
        "file_backed_rss_mb_after": int(status["RssFile"].split()[0]) / 1024,
    }


def _status(pid: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def _children_private_mb() -> list[float]:
    pids = [pid for task in Path("/proc/self/task").iterdir() for pid in (task / "children").read_text().split()]
    rollups = [
        dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        for pid in pids
    ]
    return [int(rollup["Private_Dirty"].split()[0]) / 1024 for rollup in rollups]


def _write(path: Path, samples: int, size: int) -> None:
    """An uncompressed .npz of random uint8 images, written in chunks (the bench itself never holds it whole)."""
    import zipfile

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("x_train.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "|u1", "fortran_order": False, "shape": (samples, 3, size, size)}
            )
            for start in range(0, samples, 4096):
                rows = min(4096, samples - start)
                member.write(rng.integers(0, 255, (rows, 3, size, size), dtype=np.uint8).tobytes())
        for key, value in (
            ("y_train", np.arange(samples) % 10),
            ("y_val", np.arange(256) % 10),
            ("x_val", rng.integers(0, 255, (256, 3, size, size), dtype=np.uint8)),
        ):
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, value)


def _write_folder(root: Path, samples: int, size: int) -> None:
    """An ImageFolder of random RGB JPEGs in 10 classes, and a small val split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", samples), ("val", 200)):
        for i in range(count):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def _run(mode: str, path: Path, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), str(steps)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _folder_case(args, tmp: str) -> dict:
    root = Path(tmp) / "folder"
    _write_folder(root, args.folder_samples, args.folder_size)
    rows = [
        {
            "samples": args.folder_samples,
            "uint8_mb": args.folder_samples * 3 * args.folder_size**2 / 2**20,
            **_run(mode, root, args.steps),
        }
        for mode in ("folder-decoded", "folder-lazy")
    ]
    return {
        "input": [3, args.folder_size, args.folder_size],
        "steps": args.steps,
        "rows": rows,
        "peak_memory_ratio": rows[0]["peak_rss_mb"] / rows[1]["peak_rss_mb"],
        "throughput_ratio": rows[1]["train_samples_per_s"] / rows[0]["train_samples_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--large", type=int, default=4)
    parser.add_argument("--cases", default="npz,folder")
    parser.add_argument("--folder-samples", type=int, default=4000)
    parser.add_argument("--folder-size", type=int, default=128)
    args = parser.parse_args()
    results_path = ROOT / "bench" / "results" / "data_streaming.json"
    result = json.loads(results_path.read_text()) if results_path.exists() else {}
    if "folder" in args.cases.split(","):
        with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as tmp:
            result["image_folder"] = _folder_case(args, tmp)
    if "npz" in args.cases.split(","):
        result.update(_npz_case(args))
    results_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _npz_case(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="squeezer-bench-") as tmp:
        for samples, modes in ((args.samples, ("in-memory", "streaming")), (args.samples * args.large, ("streaming",))):
            path = Path(tmp) / f"data-{samples}.npz"
            _write(path, samples, args.size)
            for mode in modes:
                rows.append(
                    {
                        "samples": samples,
                        "float32_mb": samples * 3 * args.size**2 * 4 / 2**20,
                        **_run(mode, path, args.steps),
                    }
                )
            path.unlink()
    return {
        "input": [3, args.size, args.size],
        "steps": args.steps,
        "rows": rows,
        "peak_memory_ratio": rows[0]["peak_rss_mb"] / rows[1]["peak_rss_mb"],
        "throughput_ratio": rows[1]["train_samples_per_s"] / rows[0]["train_samples_per_s"],
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        main()
