"""Bundled sample baselines: LeNet-5 trained on the sample data sets, so a first compression needs no model of
one's own. Trained once, deterministically, and cached; parallel processes may race to train, never to publish."""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from squeezer.core.errors import DatasetError
from squeezer.core.intake.data import load_dataset
from squeezer.core.intake.models import LoadedModel, save_model_dir
from squeezer.core.intake.registry import build_architecture
from squeezer.core.measure import top1_accuracy
from squeezer.core.train import fit

CACHE_VERSION = "v1"  # bump when a recipe changes, so stale caches are never reused


@dataclass(frozen=True)
class Recipe:
    input_size: int
    schedule: tuple[tuple[int, float], ...]  # (epochs, learning rate) phases: a step decay settles the weights


RECIPES = {
    "digits": Recipe(input_size=8, schedule=((30, 0.05),)),
    "fashion-mnist": Recipe(input_size=28, schedule=((10, 0.05), (3, 0.005))),
}


def cache_root(cache_dir: Path | None = None) -> Path:
    """~/.cache/squeezer unless SQUEEZER_CACHE_DIR (or the caller) says otherwise."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("SQUEEZER_CACHE_DIR") or Path.home() / ".cache" / "squeezer")


def ensure_sample_model(name: str, *, cache_dir: Path | None = None) -> tuple[Path, float]:
    """(model directory, validation top-1 in percent) of the sample baseline for the sample data set `name`."""
    if name not in RECIPES:
        raise DatasetError(f"unknown sample {name!r}; known: {', '.join(RECIPES)}")
    entry = cache_root(cache_dir) / "samples" / f"{name}-{CACHE_VERSION}"
    if not (entry / "sample.json").exists():
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=entry.parent))
        try:
            _train(name, staging)
            try:
                staging.rename(entry)
            except OSError:  # another process published first; its model is the same one
                if not (entry / "sample.json").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry / "model", json.loads((entry / "sample.json").read_text())["accuracy"]


def _train(name: str, dest: Path) -> None:
    recipe = RECIPES[name]
    data = load_dataset(f"sample:{name}")
    args = {"input_size": recipe.input_size, "in_channels": 1, "num_classes": data.num_classes}
    architecture = {"name": "lenet5", "args": args}
    torch.manual_seed(0)
    module = build_architecture("lenet5", args)
    # One thread: the same weights on every machine, and no slowdown when parallel test processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for phase, (epochs, lr) in enumerate(recipe.schedule):
            fit(module, data.x_train, data.y_train, epochs=epochs, lr=lr, seed=phase)
    finally:
        torch.set_num_threads(threads)
    accuracy = top1_accuracy(module, data.x_val, data.y_val)
    model = LoadedModel.built(module, architecture, data.input_shape, data.num_classes)
    save_model_dir(model, dest / "model")
    (dest / "sample.json").write_text(json.dumps({"name": name, "architecture": architecture, "accuracy": accuracy}))
