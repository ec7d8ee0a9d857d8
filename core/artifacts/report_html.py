"""report.html: report.json as a page a person reads, self-contained (inline SVG and CSS, no script, nothing fetched),
legible at a laptop's width and printable.

The markup is the Jinja2 template templates/report.html, rendered with autoescape on: the page shows names from an
uploaded model (layers, dataset, options), and every one of them reaches the page escaped. This module computes what
the page shows: figures, chart coordinates and table rows.

Every figure shown carries `data-key`, the JSON Pointer (RFC 6901) of the report.json value it was formatted from, so a
test (or a reader) can check that the page says what the file says.
"""

import json
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, Template

_W, _H = 640, 360  # chart viewBox; the SVG scales to the column width
_PAD = {"left": 64, "right": 16, "top": 16, "bottom": 48}


@dataclass(frozen=True)
class Figure:
    """A report.json value as shown: its JSON Pointer and its formatted text."""

    key: str
    text: str


@dataclass(frozen=True)
class Change:
    """The last cell of a summary row: words around a figure or a ratio computed here (`derived`)."""

    prefix: str = ""
    figure: Figure | None = None
    derived: str | None = None
    suffix: str = ""


@dataclass
class Chart:
    """A scatter plot's geometry in viewBox units, for the template to draw."""

    title: str
    x_label: str
    y_label: str
    plot: tuple[float, float, float, float]  # x, y, width, height
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    budget: tuple[float, float, str] | None = None  # line y, label y, label value
    points: list[tuple[str, float, float, str]] = field(default_factory=list)  # kind, x, y, tooltip
    names: list[tuple[float, float, str, str]] = field(default_factory=list)  # x, y, text-anchor, text
    width: int = _W
    height: int = _H


def _number(value: float | int | None, kind: str) -> str:
    """The one format per kind of figure (the browser test parses these back)."""
    if value is None:
        return "–"
    return {
        "percent": f"{value:.2f} %",
        "points": f"{value:.2f} pts",
        "bytes": f"{int(value):,} B",
        "count": f"{int(value):,}",
        "ms": f"{value:.3f} ms",
        "ratio": f"{value:.2f}×",
    }[kind]


def pointer(*path: str) -> str:
    """The JSON Pointer of `path` ("model/" and "model.sqz" are single keys)."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


def _lookup(report: dict, *path: str) -> Any:
    value: Any = report
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _figure(report: dict, path: tuple[str, ...] | str, kind: str) -> Figure:
    """The value at `path` (a tuple of keys, or one dotted string of keys without dots), formatted and tagged."""
    path = tuple(path.split(".")) if isinstance(path, str) else path
    return Figure(pointer(*path), _number(_lookup(report, *path), kind))


def allowed_drop(report: dict) -> float:
    target = report["target"]
    if target["drop_type"] == "relative":
        return report["baseline"]["accuracy"] * target["max_drop"] / 100.0
    return target["max_drop"]


# -- charts ---------------------------------------------------------------------------------------------------------
def _ticks(low: float, high: float, log: bool) -> list[float]:
    if log:
        candidates = [m * 10**e for e in range(-3, 6) for m in (1, 2, 5)]
        return [t for t in candidates if low <= t <= high] or [low, high]
    span = high - low or 1.0
    step = 10 ** math.floor(math.log10(span / 5))
    step *= next(m for m in (1, 2, 5, 10) if span / (step * m) <= 6)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _span(values: list[float], log: bool) -> tuple[float, float]:
    """The axis range around `values`: a margin on each side (a factor on a log axis)."""
    low, high = min(values), max(values)
    if log:
        return low / 1.3, high * 1.3
    margin = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    return max(0.0, low - margin), high + margin


def _shared_names(shown: list[dict], place) -> list[tuple[float, float, str, str]]:
    """Point names as labels; points closer than a label's height share one label."""
    groups: list[tuple[float, float, list[str]]] = []
    for point in shown:
        if point.get("name"):
            x, y = place(point)
            near = next((group for group in groups if abs(group[0] - x) < 40 and abs(group[1] - y) < 14), None)
            if near:
                near[2].append(point["name"])
            else:
                groups.append((x, y, [point["name"]]))
    right = _PAD["left"] + (_W - _PAD["left"] - _PAD["right"]) * 0.7
    return [(x, y, "end" if x > right else "start", ", ".join(labels)) for x, y, labels in groups]


def scatter_chart(
    points: list[dict], *, x_label: str, y_label: str, log_x: bool, budget: float | None, title: str
) -> Chart | None:
    """A scatter plot of points {x, y, kind: accepted|rejected|chosen|baseline, label, name?}; a dashed budget line
    at y=budget. None when no point can be placed."""
    xs = [p["x"] for p in points if p["x"] and (p["x"] > 0 or not log_x)]
    ys = [p["y"] for p in points] + ([budget] if budget is not None else [])
    if not xs:
        return None
    x_low, x_high = _span(xs, log_x)
    y_margin = (max(ys) - min(ys)) * 0.1 or 0.5
    y_low, y_high = min(ys) - y_margin, max(ys) + y_margin
    inner_w, inner_h = _W - _PAD["left"] - _PAD["right"], _H - _PAD["top"] - _PAD["bottom"]

    def sx(x: float) -> float:
        if log_x:
            return _PAD["left"] + inner_w * (math.log(x) - math.log(x_low)) / (math.log(x_high) - math.log(x_low))
        return _PAD["left"] + inner_w * (x - x_low) / (x_high - x_low)

    def sy(y: float) -> float:
        return _PAD["top"] + inner_h * (1 - (y - y_low) / (y_high - y_low))

    chart = Chart(title, x_label, y_label, plot=(_PAD["left"], _PAD["top"], inner_w, inner_h))
    chart.x_ticks = [(sx(tick), f"{tick:g}") for tick in _ticks(x_low, x_high, log_x)]
    chart.y_ticks = [(sy(tick), f"{round(tick, 6):g}") for tick in _ticks(y_low, y_high, False)]
    if budget is not None:
        y = sy(budget)
        chart.budget = (y, y + 15 if y + 15 < _PAD["top"] + inner_h else y - 6, f"{budget:.2f}")
    order = {"rejected": 0, "accepted": 1, "baseline": 2, "chosen": 3}
    shown = [p for p in sorted(points, key=lambda p: order[p["kind"]]) if p["x"] > 0 or not log_x]
    chart.points = [(p["kind"], sx(p["x"]), sy(p["y"]), p["label"]) for p in shown]
    chart.names = _shared_names(shown, lambda p: (sx(p["x"]), sy(p["y"])))
    return chart


def _tradeoff_points(report: dict) -> list[dict]:
    baseline = report["baseline"]["accuracy"]
    points = [{"x": 1.0, "y": baseline, "kind": "baseline", "label": f"baseline: {baseline:.2f} %, 1×"}]
    for trial in report["trials"]:
        layers = ", ".join(trial["layers"][:4]) + ("…" if len(trial["layers"]) > 4 else "")
        points.append(
            {
                "x": trial["compression_ratio"],
                "y": trial["accuracy"],
                "kind": "accepted" if trial["accepted"] else "rejected",
                "label": f"step {trial['step']} {trial['stage']} {layers}: {trial['accuracy']:.2f} %, "
                f"{trial['compression_ratio']:.2f}×, {'accepted' if trial['accepted'] else 'rejected'}",
            }
        )
    points.append(
        {
            "x": report["compression_ratio"],
            "y": report["compressed"]["accuracy"],
            "kind": "chosen",
            "label": f"returned: {report['compressed']['accuracy']:.2f} %, {report['compression_ratio']:.2f}×",
        }
    )
    return points


def _candidate_kind(candidate: dict) -> str:
    if candidate["stage"] == "baseline":
        return "baseline"
    if candidate["chosen"]:
        return "chosen"
    return "accepted" if candidate["within_budget"] else "rejected"


def _latency_points(report: dict) -> list[dict]:
    """Accuracy against onnxruntime latency at batch 32: auto's candidates, else the baseline and model.onnx."""
    key = "latency_ms_batch32"
    if report.get("candidates"):
        ckey = "latency_ms" if "latency_ms" in report["candidates"][0] else key  # on the speed target, else older
        return [
            {
                "x": c[ckey],
                "y": c["accuracy"],
                "kind": _candidate_kind(c),
                "name": c["stage"],
                "label": f"{c['stage']}: {c['accuracy']:.2f} %, {c[ckey]:.3f} ms, {c['bytes']:,} B",
            }
            for c in report["candidates"]
            if c[ckey] is not None
        ]
    base, onnx = report["baseline_onnx"], report["artifacts"]["model.onnx"]
    return [
        {
            "x": base[key],
            "y": base["accuracy"],
            "kind": "baseline",
            "name": "baseline ONNX",
            "label": f"baseline ONNX: {base[key]:.3f} ms",
        },
        {
            "x": onnx[key],
            "y": onnx["accuracy"],
            "kind": "chosen",
            "name": "model.onnx",
            "label": f"model.onnx: {onnx[key]:.3f} ms",
        },
    ]


def _charts(report: dict) -> dict[str, Any]:
    budget = report["baseline"]["accuracy"] - allowed_drop(report)
    y_label = f"{report['metric']} accuracy (%)"
    return {
        "tradeoff": scatter_chart(
            _tradeoff_points(report),
            x_label="compression (float32 bytes ÷ file bytes, ×, log scale)",
            y_label=y_label,
            log_x=True,
            budget=budget,
            title="accuracy against compression for every trial",
        ),
        "latency": scatter_chart(
            _latency_points(report),
            x_label="onnxruntime latency, batch 32, CPU, one thread (ms)",
            y_label=y_label,
            log_x=False,
            budget=budget,
            title="accuracy against latency",
        ),
        "trial_count": len(report["trials"]),
        "latency_title": "Accuracy against latency" + (" (auto's candidates)" if report.get("candidates") else ""),
    }


# -- tables ---------------------------------------------------------------------------------------------------------
def _summary_rows(report: dict) -> list[tuple[str, Figure, Figure, Change]]:
    def row(label: str, key: str, kind: str, change: Change = Change()) -> tuple[str, Figure, Figure, Change]:
        return label, _figure(report, f"baseline.{key}", kind), _figure(report, f"compressed.{key}", kind), change

    drop = Change("drop ", _figure(report, "accuracy_drop", "points"))
    smaller = Change(figure=_figure(report, "compression_ratio", "ratio"), suffix=" smaller")
    fewer = Change(figure=_figure(report, "macs_reduction", "ratio"), suffix=" fewer")
    rows = [
        row(f"Accuracy ({report['metric']})", "accuracy", "percent", drop),
        row("Size: weights as float32 → returned file", "size_bytes", "bytes", smaller),
        row("MACs per sample", "macs", "count", fewer),
        row("Parameters (nonzero)", "nonzero_params", "count"),
        row("Latency, torch (model.sqz), batch 1", "latency_ms", "ms"),
        row("Latency, torch (model.sqz), batch 32", "latency_ms_batch32", "ms"),
    ]
    if report.get("artifacts", {}).get("model.onnx") and report.get("baseline_onnx"):
        onnx = ("artifacts", "model.onnx")
        rows.append(
            (
                "ONNX file (baseline ONNX → model.onnx)",
                _figure(report, "baseline_onnx.bytes", "bytes"),
                _figure(report, (*onnx, "bytes"), "bytes"),
                Change(derived=_onnx_ratio(report, "bytes"), suffix=" smaller"),
            )
        )
        rows += [
            (
                f"Latency, onnxruntime, batch {batch}",
                _figure(report, f"baseline_onnx.{key}", "ms"),
                _figure(report, (*onnx, key), "ms"),
                Change("speed-up ", derived=_onnx_ratio(report, key)),
            )
            for batch, key in ((1, "latency_ms"), (32, "latency_ms_batch32"))
        ]
    return rows


def _onnx_ratio(report: dict, key: str) -> str:
    """baseline ONNX ÷ model.onnx for `key`, computed here (report.json holds the two figures, not their ratio)."""
    base, onnx = report["baseline_onnx"][key], report["artifacts"]["model.onnx"][key]
    return _number(base / onnx if onnx else None, "ratio")


def _file_rows(report: dict) -> list[tuple[str, list[Figure], Any]]:
    """Each file's label, its figures (bytes, accuracy, latency at batch 1 and 32) and its runtime."""
    rows: list[tuple[str, tuple[str, ...]]] = [("baseline ONNX (float32, for comparison)", ("baseline_onnx",))]
    rows += [
        (name + (" (returned)" if name == report.get("deployable") else ""), ("artifacts", name))
        for name in report.get("artifacts", {})
    ]
    kinds = (("bytes", "bytes"), ("accuracy", "percent"), ("latency_ms", "ms"), ("latency_ms_batch32", "ms"))
    return [
        (label, [_figure(report, (*path, key), kind) for key, kind in kinds], _lookup(report, *path, "runtime"))
        for label, path in rows
        if _lookup(report, *path) is not None
    ]


def _layer_rows(report: dict) -> list[dict[str, Any]]:
    """Each layer's names and its bars as (filled share, text)."""
    largest = max((layer["params"] for layer in report["layers"]), default=1) or 1
    rows = []
    for layer in report["layers"]:
        kept, before = layer.get("channels_kept", layer["shape"][0]), layer.get("channels_before", layer["shape"][0])
        params, sparsity, bits = layer["params"], layer["sparsity"], layer["bits"]
        bars = [
            (params / largest, f"{params:,}"),
            (sparsity, f"{100 * sparsity:.1f} %"),
            (bits / 32, f"{bits:.2f}"),
            (kept / before if before else 1.0, f"{kept}/{before}"),
        ]
        rows.append(
            {
                "name": layer["name"],
                "type": layer["type"],
                "shape": "×".join(map(str, layer["shape"])),
                "bars": [(100 * min(max(share, 0.0), 1.0), text) for share, text in bars],
                "representation": layer["representation"],
                "reason": layer.get("reason", ""),
            }
        )
    return rows


def _settings(report: dict) -> dict[str, Any]:
    facts = {
        "method": report["method"],
        "objective": report.get("objective"),
        "task": report.get("task"),
        "metric": report["metric"],
        "dataset": report.get("dataset"),
        "device": report.get("device"),
        "seed": report.get("seed"),
        "preprocessing": report.get("preprocessing"),
        "duration": f"{report.get('duration_s', 0):.1f} s",
        "squeezer": report.get("squeezer_version"),
    }
    return {
        "facts": [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in facts.items() if v is not None],
        "options": [(k, json.dumps(v)) for k, v in _flatten(report.get("settings") or {}).items()],
    }


def _flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


@cache
def _template() -> Template:
    environment = Environment(
        loader=PackageLoader("squeezer.core.artifacts", "templates"),
        autoescape=True,  # uploaded names are text, never markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("report.html")


def render_report_html(report: dict) -> str:
    """The whole page for `report` (a report.json document)."""
    drop_kind = "points" if report["target"]["drop_type"] == "absolute" else "percent"
    return _template().render(
        method=report["method"],
        objective=report.get("objective"),
        deployable=report.get("deployable", "model.sqz"),
        metric=report["metric"],
        drop_type=report["target"]["drop_type"],
        target_met=report["target_met"],
        title=f"Squeezer report: {report['method']} on {report.get('dataset', {}).get('name', 'data')}",
        ratio=_figure(report, "compression_ratio", "ratio"),
        drop=_figure(report, "accuracy_drop", "points"),
        max_drop=_figure(report, "target.max_drop", drop_kind),
        summary=_summary_rows(report),
        files=_file_rows(report),
        charts=_charts(report),
        layers=_layer_rows(report),
        settings=_settings(report),
    )
