"""Checkpoints a restarted job resumes from: tensors in safetensors, everything else in JSON, each file replaced
atomically (the JSON last, so a half-written checkpoint is never read). Never pickle."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(directory: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Writes `name`.safetensors and `name`.json under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors_path, json_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    save_file(
        {key: value.detach().cpu().contiguous() for key, value in tensors.items()},
        str(tensors_path.with_suffix(".tmp")),
    )
    tensors_path.with_suffix(".tmp").replace(tensors_path)
    json_path.with_suffix(".jtmp").write_text(json.dumps(meta))
    json_path.with_suffix(".jtmp").replace(json_path)


def load_checkpoint(directory: Path | None, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The tensors and metadata `save_checkpoint` wrote, or None when there is no checkpoint of that name."""
    if directory is None or not (directory / f"{name}.json").exists():
        return None
    meta = json.loads((directory / f"{name}.json").read_text())
    return load_file(str(directory / f"{name}.safetensors")), meta


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{key}": value for key, value in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix(f"{prefix}/"): value for key, value in tensors.items() if key.startswith(f"{prefix}/")}
