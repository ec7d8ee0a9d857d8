"""report.html: report.json as a page a person reads, self-contained (inline SVG and CSS, no script, nothing fetched),
legible at a laptop's width and printable.

Every figure shown carries `data-key`, the JSON Pointer (RFC 6901) of the report.json value it was formatted from, so a
test (or a reader) can check that the page says what the file says.
"""

import html
import json
import math
from typing import Any

_W, _H = 640, 360  # chart viewBox; the SVG scales to the column width
_PAD = {"left": 64, "right": 16, "top": 16, "bottom": 48}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


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


def _figure(report: dict, path: tuple[str, ...] | str, kind: str) -> str:
    """The value at `path` (a tuple of keys, or one dotted string of keys without dots) formatted and tagged."""
    path = tuple(path.split(".")) if isinstance(path, str) else path
    return f'<span class="num" data-key="{_esc(pointer(*path))}">{_esc(_number(_lookup(report, *path), kind))}</span>'


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


def _tick_label(value: float) -> str:
    return f"{value:g}"


def scatter_svg(
    points: list[dict], *, x_label: str, y_label: str, log_x: bool, budget: float | None, title: str
) -> str:
    """A scatter plot of points {x, y, kind: accepted|rejected|chosen|baseline, label, name?}; a dashed budget line
    at y=budget."""
    xs = [p["x"] for p in points if p["x"] and (p["x"] > 0 or not log_x)]
    ys = [p["y"] for p in points] + ([budget] if budget is not None else [])
    if not xs:
        return ""
    x_low, x_high = min(xs), max(xs)
    if log_x:
        x_low, x_high = x_low / 1.3, x_high * 1.3
    else:
        margin = (x_high - x_low) * 0.1 or abs(x_high) * 0.1 or 1.0
        x_low, x_high = max(0.0, x_low - margin), x_high + margin
    y_margin = (max(ys) - min(ys)) * 0.1 or 0.5
    y_low, y_high = min(ys) - y_margin, max(ys) + y_margin
    inner_w, inner_h = _W - _PAD["left"] - _PAD["right"], _H - _PAD["top"] - _PAD["bottom"]

    def sx(x: float) -> float:
        if log_x:
            return _PAD["left"] + inner_w * (math.log(x) - math.log(x_low)) / (math.log(x_high) - math.log(x_low))
        return _PAD["left"] + inner_w * (x - x_low) / (x_high - x_low)

    def sy(y: float) -> float:
        return _PAD["top"] + inner_h * (1 - (y - y_low) / (y_high - y_low))

    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}" class="chart">',
        f'<rect x="{_PAD["left"]}" y="{_PAD["top"]}" width="{inner_w}" height="{inner_h}" class="plot"/>',
    ]
    for tick in _ticks(x_low, x_high, log_x):
        x = sx(tick)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_PAD["top"]}" x2="{x:.1f}" y2="{_PAD["top"] + inner_h}" class="grid"/>'
            f'<text x="{x:.1f}" y="{_PAD["top"] + inner_h + 18}" class="tick" text-anchor="middle">'
            f"{_tick_label(tick)}</text>"
        )
    for tick in _ticks(y_low, y_high, False):
        y = sy(tick)
        parts.append(
            f'<line x1="{_PAD["left"]}" y1="{y:.1f}" x2="{_PAD["left"] + inner_w}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{_PAD["left"] - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{_tick_label(round(tick, 6))}</text>"
        )
    if budget is not None:
        y = sy(budget)
        parts.append(
            f'<line x1="{_PAD["left"]}" y1="{y:.1f}" x2="{_PAD["left"] + inner_w}" y2="{y:.1f}" class="budget"/>'
            f'<text x="{_PAD["left"] + 6}" y="{y + 15 if y + 15 < _PAD["top"] + inner_h else y - 6:.1f}" '
            f'class="tick budget-label">lowest accuracy within the budget: {budget:.2f} %</text>'
        )
    order = {"rejected": 0, "accepted": 1, "baseline": 2, "chosen": 3}
    shown = [p for p in sorted(points, key=lambda p: order[p["kind"]]) if p["x"] > 0 or not log_x]
    names: list[list] = []  # [x, y, names]: points closer than a label's height share one label
    for point in shown:
        if point.get("name"):
            x, y = sx(point["x"]), sy(point["y"])
            near = next((n for n in names if abs(n[0] - x) < 40 and abs(n[1] - y) < 14), None)
            if near:
                near[2].append(point["name"])
            else:
                names.append([x, y, [point["name"]]])
    for point in shown:
        x, y, tip = sx(point["x"]), sy(point["y"]), f"<title>{_esc(point['label'])}</title>"
        if point["kind"] == "rejected":
            parts.append(f'<g class="rejected"><path d="M{x - 4:.1f},{y - 4:.1f}l8,8m0,-8l-8,8"/>{tip}</g>')
        elif point["kind"] == "chosen":
            parts.append(
                f'<g class="chosen"><circle cx="{x:.1f}" cy="{y:.1f}" r="8"/>'
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="dot"/>{tip}</g>'
            )
        else:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" class="{point["kind"]}">{tip}</circle>')
    for x, y, labels in names:
        anchor = "end" if x > _PAD["left"] + inner_w * 0.7 else "start"
        parts.append(
            f'<text x="{x + (-10 if anchor == "end" else 10):.1f}" y="{y - 8:.1f}" class="tick name" '
            f'text-anchor="{anchor}">{_esc(", ".join(labels))}</text>'
        )
    parts.append(
        f'<text x="{_PAD["left"] + inner_w / 2}" y="{_H - 8}" class="axis" text-anchor="middle">{_esc(x_label)}</text>'
        f'<text x="14" y="{_PAD["top"] + inner_h / 2}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 14 {_PAD["top"] + inner_h / 2})">{_esc(y_label)}</text></svg>'
    )
    return "".join(parts)


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


def _latency_points(report: dict) -> list[dict]:
    """Accuracy against onnxruntime latency at batch 32: auto's candidates, else the baseline and model.onnx."""
    key = "latency_ms_batch32"
    if report.get("candidates"):
        points = []
        for c in report["candidates"]:
            kind = (
                "baseline"
                if c["stage"] == "baseline"
                else "chosen"
                if c["chosen"]
                else ("accepted" if c["within_budget"] else "rejected")
            )
            points.append(
                {
                    "x": c[key],
                    "y": c["accuracy"],
                    "kind": kind,
                    "name": c["stage"],
                    "label": f"{c['stage']}: {c['accuracy']:.2f} %, {c[key]:.3f} ms, {c['bytes']:,} B",
                }
            )
        return points
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


# -- sections -------------------------------------------------------------------------------------------------------
def _summary(report: dict) -> str:
    met = report["target_met"]
    rows = [
        (
            "Accuracy (" + _esc(report["metric"]) + ")",
            _figure(report, "baseline.accuracy", "percent"),
            _figure(report, "compressed.accuracy", "percent"),
            "drop " + _figure(report, "accuracy_drop", "points"),
        ),
        (
            "Size: weights as float32 → returned file",
            _figure(report, "baseline.size_bytes", "bytes"),
            _figure(report, "compressed.size_bytes", "bytes"),
            _figure(report, "compression_ratio", "ratio") + " smaller",
        ),
        (
            "MACs per sample",
            _figure(report, "baseline.macs", "count"),
            _figure(report, "compressed.macs", "count"),
            _figure(report, "macs_reduction", "ratio") + " fewer",
        ),
        (
            "Parameters (nonzero)",
            _figure(report, "baseline.nonzero_params", "count"),
            _figure(report, "compressed.nonzero_params", "count"),
            "",
        ),
        (
            "Latency, torch (model.sqz), batch 1",
            _figure(report, "baseline.latency_ms", "ms"),
            _figure(report, "compressed.latency_ms", "ms"),
            "",
        ),
        (
            "Latency, torch (model.sqz), batch 32",
            _figure(report, "baseline.latency_ms_batch32", "ms"),
            _figure(report, "compressed.latency_ms_batch32", "ms"),
            "",
        ),
    ]
    if report.get("artifacts", {}).get("model.onnx") and report.get("baseline_onnx"):
        onnx = ("artifacts", "model.onnx")
        rows += [
            (
                "ONNX file (baseline ONNX → model.onnx)",
                _figure(report, "baseline_onnx.bytes", "bytes"),
                _figure(report, (*onnx, "bytes"), "bytes"),
                _ratio(report, "bytes") + " smaller",
            )
        ]
        rows += [
            (
                f"Latency, onnxruntime, batch {batch}",
                _figure(report, f"baseline_onnx.{key}", "ms"),
                _figure(report, (*onnx, key), "ms"),
                "speed-up " + _ratio(report, key),
            )
            for batch, key in ((1, "latency_ms"), (32, "latency_ms_batch32"))
        ]
    body = "".join(
        f"<tr><th scope=row>{label}</th><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for label, a, b, c in rows
    )
    drop_kind = "points" if report["target"]["drop_type"] == "absolute" else "percent"
    budget = (
        f"Budget: at most {_figure(report, 'target.max_drop', drop_kind)}"
        f' {_esc(report["target"]["drop_type"])} drop — <strong class="{"met" if met else "missed"}">'
        f"{'met' if met else 'missed'}</strong>"
    )
    return (
        f'<section><h2>Summary</h2><p class="budget-line">{budget}</p>'
        f'<table class="summary"><thead><tr><th></th><th>baseline</th><th>compressed</th><th></th></tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
    )


def _ratio(report: dict, key: str) -> str:
    """baseline ONNX ÷ model.onnx for `key`, computed here (report.json holds the two figures, not their ratio)."""
    base, onnx = report["baseline_onnx"][key], report["artifacts"]["model.onnx"][key]
    return f'<span class="derived">{_number(base / onnx if onnx else None, "ratio")}</span>'


def _artifacts(report: dict) -> str:
    rows: list[tuple[str, tuple[str, ...]]] = [("baseline ONNX (float32, for comparison)", ("baseline_onnx",))]
    rows += [
        (name + (" (returned)" if name == report.get("deployable") else ""), ("artifacts", name))
        for name in report.get("artifacts", {})
    ]
    body = "".join(
        f"<tr><th scope=row>{_esc(label)}</th><td>{_figure(report, (*path, 'bytes'), 'bytes')}</td>"
        f"<td>{_figure(report, (*path, 'accuracy'), 'percent')}</td>"
        f"<td>{_figure(report, (*path, 'latency_ms'), 'ms')}</td>"
        f"<td>{_figure(report, (*path, 'latency_ms_batch32'), 'ms')}</td>"
        f"<td>{_esc(_lookup(report, *path, 'runtime'))}</td></tr>"
        for label, path in rows
        if _lookup(report, *path) is not None
    )
    return (
        '<section><h2>Downloadable files</h2><p class="note">Each figure measured on that file: accuracy on the '
        'validation split, median CPU latency on one thread.</p><table class="files"><thead><tr><th>file</th>'
        "<th>bytes</th><th>accuracy</th><th>latency, batch 1</th><th>latency, batch 32</th><th>runtime</th></tr>"
        f"</thead><tbody>{body}</tbody></table></section>"
    )


def _charts(report: dict) -> str:
    budget = report["baseline"]["accuracy"] - allowed_drop(report)
    metric = report["metric"]
    tradeoff = scatter_svg(
        _tradeoff_points(report),
        x_label="compression (float32 bytes ÷ file bytes, ×, log scale)",
        y_label=f"{metric} accuracy (%)",
        log_x=True,
        budget=budget,
        title="accuracy against compression for every trial",
    )
    latency = scatter_svg(
        _latency_points(report),
        x_label="onnxruntime latency, batch 32, CPU, one thread (ms)",
        y_label=f"{metric} accuracy (%)",
        log_x=False,
        budget=budget,
        title="accuracy against latency",
    )
    legend = (
        '<p class="legend"><span class="key k-baseline"></span>baseline <span class="key k-accepted"></span>'
        'accepted <span class="key k-rejected">×</span>rejected <span class="key k-chosen"></span>returned '
        '<span class="key k-budget"></span>budget (lowest accuracy allowed)</p>'
    )
    latency_title = "Accuracy against latency" + (" (auto's candidates)" if report.get("candidates") else "")
    return (
        f'<section class="charts"><h2>Trade-off</h2>{legend}<div class="grid2"><figure>{tradeoff}<figcaption>'
        f"Every trial of the search ({len(report['trials'])}), accuracy against compression.</figcaption></figure>"
        f"<figure>{latency}<figcaption>{latency_title}.</figcaption></figure></div></section>"
    )


def _bar(share: float, text: str, css: str = "") -> str:
    share = min(max(share, 0.0), 1.0)
    return (
        f'<div class="bar {css}"><div class="fill" style="width:{100 * share:.1f}%"></div>'
        f"<span>{_esc(text)}</span></div>"
    )


def _layers(report: dict) -> str:
    largest = max((layer["params"] for layer in report["layers"]), default=1) or 1
    rows = []
    for layer in report["layers"]:
        kept, before = layer.get("channels_kept", layer["shape"][0]), layer.get("channels_before", layer["shape"][0])
        params, sparsity, bits = layer["params"], layer["sparsity"], layer["bits"]
        shape = "×".join(map(str, layer["shape"]))
        rows.append(
            f"<tr><th scope=row>{_esc(layer['name'])}<div class=sub>{_esc(layer['type'])} {_esc(shape)}</div></th>"
            f"<td>{_bar(params / largest, f'{params:,}')}</td>"
            f"<td>{_bar(sparsity, f'{100 * sparsity:.1f} %')}</td>"
            f"<td>{_bar(bits / 32, f'{bits:.2f}')}</td>"
            f"<td>{_bar(kept / before if before else 1.0, f'{kept}/{before}')}</td>"
            f"<td><span class='rep rep-{_esc(layer['representation'])}'>{_esc(layer['representation'])}</span></td>"
            f"<td class=reason>{_esc(layer.get('reason', ''))}</td></tr>"
        )
    return (
        '<section><h2>Per layer</h2><table class="layers"><thead><tr><th>layer</th><th>parameters</th>'
        "<th>sparsity (zeros)</th><th>bits per weight (of 32)</th><th>channels kept</th><th>stored as</th>"
        f"<th>why</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _settings(report: dict) -> str:
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
    rows = "".join(
        f"<tr><th scope=row>{_esc(k)}</th><td>{_esc(v if isinstance(v, str) else json.dumps(v))}</td></tr>"
        for k, v in facts.items()
        if v is not None
    )
    flat = _flatten(report.get("settings") or {})
    detail = "".join(f"<div><code>{_esc(k)}</code> = {_esc(json.dumps(v))}</div>" for k, v in flat.items())
    detail = f'<h3>Every option the job ran with</h3><div class="options">{detail}</div>' if detail else ""
    return f'<section><h2>Settings</h2><table class="settings"><tbody>{rows}</tbody></table>{detail}</section>'


def _flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


_CSS = """
:root{--ink:#1d2433;--muted:#5b6475;--line:#d5d9e0;--accent:#1f6feb;--ok:#1a7f37;--bad:#cf222e;--bg:#fff}
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
background:var(--bg);margin:0 auto;max-width:1180px;padding:20px 28px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.lede{color:var(--muted);margin:0}table{border-collapse:collapse;width:100%}th,td{padding:5px 8px;text-align:left;
border-bottom:1px solid var(--line);vertical-align:top}thead th{font-size:13px;color:var(--muted);font-weight:600}
td .num,.summary td{font-variant-numeric:tabular-nums}.summary td,.files td{text-align:right}
.met{color:var(--ok)}.missed{color:var(--bad)}.note,figcaption,.legend{color:var(--muted);font-size:13px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px}figure{margin:0}.chart{width:100%;height:auto}
.chart .plot{fill:#fafbfc;stroke:var(--line)}.chart .grid{stroke:#e6e9ee}.chart .tick{font-size:12px;fill:var(--muted)}
.chart .axis{font-size:13px;fill:var(--ink)}.chart .name{fill:var(--ink)}
.chart .budget{stroke:var(--bad);stroke-dasharray:6 4;stroke-width:1.5}
.chart .budget-label{fill:var(--bad)}.chart .accepted{fill:var(--accent)}.chart .baseline{fill:#111}
.chart .rejected path{stroke:#8c959f;stroke-width:2}.chart .chosen circle{fill:none;stroke:#e36209;stroke-width:3}
.chart .chosen .dot{fill:#e36209;stroke:none}
.key{display:inline-block;width:11px;height:11px;border-radius:50%;margin:0 4px 0 12px;vertical-align:-1px}
.k-baseline{background:#111}.k-accepted{background:var(--accent)}.k-rejected{width:auto;height:auto;color:#8c959f;
font-weight:700}.k-chosen{border:3px solid #e36209}
.k-budget{width:18px;height:0;border-radius:0;border-top:2px dashed var(--bad)}
.bar{position:relative;min-width:90px;height:20px;background:#eef1f5;border-radius:3px}
.bar .fill{position:absolute;inset:0 auto 0 0;background:#a9c6f5;border-radius:3px}
.bar span{position:relative;padding:0 6px;font-size:13px;line-height:20px;font-variant-numeric:tabular-nums}
.sub{font-weight:400;color:var(--muted);font-size:12px}.reason{font-size:13px;color:var(--muted);max-width:320px}
.rep{font-size:12px;padding:1px 6px;border-radius:8px;background:#eef1f5}.rep-ternary{background:#dafbe1}
.rep-int8{background:#fff1c2}.rep-sparse-float{background:#ddf4ff}
h3{font-size:14px;margin:14px 0 6px}.options{columns:3 280px;font-size:12px;color:var(--muted)}
.options div{break-inside:avoid;padding:1px 0}.options code{color:var(--ink)}.derived{color:var(--muted)}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
@media print{body{max-width:none;padding:0;font-size:11pt}.grid2{grid-template-columns:1fr 1fr}
section{break-inside:avoid}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}h2{break-after:avoid}.options{columns:3}}
"""


def render_report_html(report: dict) -> str:
    """The whole page for `report` (a report.json document)."""
    title = f"Squeezer report: {report['method']} on {report.get('dataset', {}).get('name', 'data')}"
    objective = f", objective {_esc(report['objective'])}" if report.get("objective") else ""
    lede = (
        f"{_esc(report['method'])}{objective}; returned file {_esc(report.get('deployable', 'model.sqz'))}; "
        f"{_figure(report, 'compression_ratio', 'ratio')} smaller at {_figure(report, 'accuracy_drop', 'points')} "
        f"of {_esc(report['metric'])}."
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{_esc(title)}</title><style>{_CSS}</style></head>'
        f'<body><h1>{_esc(title)}</h1><p class="lede">{lede}</p>{_summary(report)}{_artifacts(report)}'
        f"{_charts(report)}{_layers(report)}{_settings(report)}</body></html>"
    )
