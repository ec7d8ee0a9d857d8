"""report.json: the numbers a user needs to judge a compression run (issue 2 contract; issue 4 adds the metric,
latency at batch 32 and per-layer channel counts)."""

from dataclasses import asdict
from typing import Any

MEASURE_KEYS = ("accuracy", "params", "nonzero_params", "macs", "size_bytes", "latency_ms", "latency_ms_batch32")
# "flops" was the first name of "macs" (it always held multiply-accumulates, not FLOPs): kept as an alias with the same
# value, as "flops_reduction" is of "macs_reduction", so scripts written against the old keys keep working.
MACS_ALIAS = "flops"


def with_macs_alias(measures: dict[str, Any]) -> dict[str, Any]:
    """`measures` with both "macs" and its alias "flops" set, from whichever of the two it holds."""
    macs = measures.get("macs", measures.get(MACS_ALIAS))
    return {**measures, "macs": macs, MACS_ALIAS: macs} if macs is not None else measures


def build_report(
    *,
    method: str,
    metric: str,
    max_drop: float,
    drop_type: str,
    target_met: bool,
    baseline: dict[str, Any],
    compressed: dict[str, Any],
    layers: list,
    trials: list,
    extras: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assembles the report; `baseline`/`compressed` must hold every key of MEASURE_KEYS, "accuracy" being `metric`
    (top1, pixel_accuracy or miou) and "latency_ms" the batch-1 median.

        compressed["size_bytes"] is the on-disk size of model.sqz and baseline["size_bytes"] the
        float32 bytes of the input weights, so compression_ratio is a file-bytes ratio, never a bit count.
        "macs" counts multiply-accumulates per sample; either it or its alias "flops" may be given, the report has both.
    """
    baseline, compressed = with_macs_alias(baseline), with_macs_alias(compressed)
    for side, measures in (("baseline", baseline), ("compressed", compressed)):
        missing = [key for key in MEASURE_KEYS if key not in measures]
        if missing:
            raise ValueError(f"{side} measures lack {missing}")
    macs_reduction = baseline["macs"] / compressed["macs"] if compressed["macs"] else None
    return {
        "method": method,
        "metric": metric,
        "target": {"max_drop": max_drop, "drop_type": drop_type},
        "target_met": target_met,
        "baseline": baseline,
        "compressed": compressed,
        "accuracy_drop": baseline["accuracy"] - compressed["accuracy"],
        "compression_ratio": baseline["size_bytes"] / compressed["size_bytes"],
        "macs_reduction": macs_reduction,
        "flops_reduction": macs_reduction,
        "layers": [asdict(layer) for layer in layers],
        "trials": [asdict(trial) for trial in trials],
        **(extras or {}),
    }
