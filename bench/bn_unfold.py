"""Does un-folding BatchNorm help fine-tune a BN-folded export? (docs/METHODS.md "Learning rate and
divergence").

A residual CNN trained with Adam on digits is exported in eval mode (BatchNorm folded into the convolutions), its
weight scale changed by a function-preserving factor (tests/core/wild.py; factor 1 keeps the export as it is), then
globally magnitude-pruned to 50 % and fine-tuned for 150 SGD steps, three ways, side by side:
  folded: as uploaded, at the rate core.train.choose_lr picks;
  unfolded: a BatchNorm after every convolution, initialised to the identity on the data (γ = batch std, β = batch
            mean, running statistics alike), trained, then folded back; at that rate and at 0.01.
Writes bench/results/bn_unfold.json. Command: OMP_NUM_THREADS=1 .venv/bin/python bench/bn_unfold.py
"""

import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from squeezer.core.intake.data import load_dataset  # noqa: E402
from squeezer.core.intake.models import load_model  # noqa: E402
from squeezer.core.measure import metric_function  # noqa: E402
from squeezer.core.train import choose_lr, fit_guarded  # noqa: E402
from tests.core.wild import export_eval, rescaled, residual_cnn, train_on_digits  # noqa: E402

STEPS, SPARSITY = 150, 0.5


class Unfolded(nn.Module):
    def __init__(self, conv: nn.Conv2d, sample: torch.Tensor):
        super().__init__()
        self.conv, self.norm = conv, nn.BatchNorm2d(conv.out_channels)
        with torch.no_grad():
            out = conv(sample)
            mean, var = out.mean((0, 2, 3)), out.var((0, 2, 3), unbiased=False)
            self.norm.running_mean.copy_(mean)
            self.norm.running_var.copy_(var)
            self.norm.weight.copy_((var + self.norm.eps).sqrt())
            self.norm.bias.copy_(mean)

    def forward(self, x):
        return self.norm(self.conv(x))

    def folded(self) -> nn.Conv2d:
        conv, norm = copy.deepcopy(self.conv), self.norm
        scale = norm.weight / (norm.running_var + norm.eps).sqrt()
        with torch.no_grad():
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
        return conv


def _convs(module):
    return [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def _set(module, name, child):
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, child)


def unfold(module, x):
    inputs = {}

    def keep_input(name):
        def hook(_module, args, _output):
            inputs[name] = args[0].detach()  # returns None: the output stays the layer's own

        return hook

    hooks = [conv.register_forward_hook(keep_input(name)) for name, conv in _convs(module)]
    with torch.no_grad():
        module(x)
    for hook in hooks:
        hook.remove()
    for name, conv in _convs(module):
        _set(module, name, Unfolded(conv, inputs[name]))
    return module


def fold(module):
    for name, child in list(module.named_modules()):
        if isinstance(child, Unfolded):
            _set(module, name, child.folded())
    return module


def prune(module):
    weights = [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    threshold = torch.cat([w.detach().abs().flatten() for w in weights]).quantile(SPARSITY)
    masks = [(w.detach().abs() > threshold).float() for w in weights]
    with torch.no_grad():
        for w, m in zip(weights, masks, strict=True):
            w.mul_(m)
    return masks


def run(factor: float) -> dict:
    data, top1 = load_dataset("sample:digits"), metric_function("top1")
    path = Path(tempfile.mkdtemp()) / "folded.onnx"
    path.write_bytes(rescaled(export_eval(train_on_digits(residual_cnn())), factor))
    base = load_model(path).module
    chosen = choose_lr(base, data.x_train, data.y_train, lr=0.01).lr
    row = {"factor": factor, "baseline": top1(base, data.x_val, data.y_val), "chosen_lr": chosen}
    for label, unfolded, lr in (("folded", False, chosen), ("unfolded", True, chosen), ("unfolded_lr0.01", True, 0.01)):
        module = copy.deepcopy(base)
        prune(module)
        row.setdefault("pruned", top1(module, data.x_val, data.y_val))
        if unfolded:
            unfold(module, data.x_train[:512])
        masked = [
            (m.weight, (m.weight.detach() != 0).float())
            for m in module.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]

        def keep_masks(_optimizer, masked=masked):
            for weight, mask in masked:
                weight.mul_(mask)

        outcome = fit_guarded(
            module,
            data.x_train,
            data.y_train,
            lr=lr,
            epochs=-(-STEPS * 128 // 1437),
            max_samples=None,
            lr_schedule="cosine",
            after_step=keep_masks,
        )
        if unfolded:
            fold(module)
        row[label] = {
            "accuracy": top1(module, data.x_val, data.y_val),
            "lr": outcome.lr,
            "retries": len(outcome.retries),
            "recovered": outcome.recovered,
        }
    return row


if __name__ == "__main__":
    rows = [run(factor) for factor in (1.0, 100.0)]
    out = Path(__file__).resolve().parent / "results" / "bn_unfold.json"
    out.write_text(json.dumps({"steps": STEPS, "sparsity": SPARSITY, "rows": rows}, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
