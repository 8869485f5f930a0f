"""What ``polyserve tune`` leaves under ``--output``, and the result it hands the operator.

- ``config.pbtxt``: the winner, Triton's text format, ready for the model's directory;
- ``inferencemodel-config.yaml``: the same as the InferenceModel's ``spec.config`` block;
- ``trials.json``: every trial, when it started and what it measured;
- ``result.json``: the capacity per replica at the SLO, the hardware, the winner's tuned fields
  (``summary``: small enough for a Kubernetes termination message, 4096 bytes, which is how a
  tuning Job hands it to the operator);
- ``report.txt``: every trial in a table, the winner against the model's own config, the
  precision checks;
- ``report.html``: the throughput-latency curve of every trial and the Pareto front of all the
  points measured, as inline SVG (no script, nothing fetched), with the same table.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import text_format

from polyserve_worker import config as model_config
from polyserve_worker.tuning import hardware, searching, space

#: Kubernetes keeps at most this many bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
#: The config fields a tuner writes; the rest of a config is the user's and stays as it was.
TUNED_FIELDS = ("backend", "max_batch_size", "dynamic_batching", "instance_group", "parameters")


@dataclass(frozen=True)
class Outcome:
    """A finished search, as the report tells it."""

    model: str
    slo_ms: float
    protocol: str
    budget_s: float
    elapsed_s: float
    machine: hardware.Machine
    space: space.Space
    trials: Sequence[searching.Trial]
    winner: searching.Trial | None
    reference_rate: float

    @property
    def baseline(self) -> searching.Trial | None:
        return next((t for t in self.trials if t.label), None)

    def winner_config(self) -> Any | None:
        return self.space.apply(self.winner.candidate) if self.winner is not None else None


def config_block(config: Any, tuned_only: bool = False) -> dict[str, Any]:
    """A ModelConfig as the InferenceModel's ``spec.config`` writes it (Triton's field names,
    parameters as plain strings), without its name (the operator fills it in); with
    ``tuned_only``, only the fields a tuner changes."""
    data = model_config.to_dict(config)
    data.pop("name", None)
    if "parameters" in data:
        data["parameters"] = {k: v.get("string_value", "") for k, v in data["parameters"].items()}
    if tuned_only:
        data = {k: v for k, v in data.items() if k in TUNED_FIELDS}
    checked = model_config.ModelConfigSpec.model_validate(data)
    block: dict[str, Any] = checked.model_dump(exclude_none=True, mode="json")
    return block


def summary(outcome: Outcome) -> dict[str, Any]:
    """The machine-readable result (``result.json``, and a tuning Job's termination
    message): capacity, where it was measured, and the winner's tuned fields."""
    winner, base = outcome.winner, outcome.baseline
    best = winner.best(outcome.slo_ms) if winner is not None else None
    config = outcome.winner_config()
    found: dict[str, Any] = {
        "model": outcome.model,
        "sloP95Ms": outcome.slo_ms,
        "protocol": outcome.protocol,
        "capacity": round(winner.capacity, 1) if winner is not None else None,
        "p95Ms": round(best.p95_ms, 3) if best is not None else None,
        "concurrency": best.concurrency if best is not None else None,
        "baselineCapacity": round(base.capacity, 1) if base is not None else None,
        "trials": len(outcome.trials),
        "seconds": round(outcome.elapsed_s, 1),
        "cpuModel": outcome.machine.cpu_model,
        "cpus": outcome.machine.cpus,
        "gpus": list(outcome.machine.gpus),
        "backend": winner.candidate.backend if winner is not None else None,
        "precision": winner.candidate.precision if winner is not None else None,
        "config": config_block(config, tuned_only=True) if config is not None else None,
    }
    if len(json.dumps(found)) > TERMINATION_MESSAGE_LIMIT:
        found["config"] = None  # the numbers matter most; the report has the config
        found["message"] = "the config did not fit the termination message: see report.txt"
    return found


def history(o: Outcome) -> list[dict[str, Any]]:
    """Every trial, in order: when it started, what it tried, what it measured (trials.json)."""
    return [
        {
            "trial": t.number,
            "startedS": round(t.started_s, 2),
            "seconds": round(t.seconds, 2),
            "state": t.state,
            "label": t.label,
            "candidate": asdict(t.candidate),
            "capacity": round(t.capacity, 1),
            "capacities": [round(c, 1) for c in t.capacities],
            "points": [asdict(p) for p in t.curve.points],
            "note": t.note,
        }
        for t in o.trials
    ]


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (throughput, p95) points no other point beats on both (more throughput and less
    latency), by rising throughput."""
    front: list[tuple[float, float]] = []
    for rate, p95 in sorted(points, key=lambda p: (p[1], -p[0])):
        if not front or rate > front[-1][0]:
            front.append((rate, p95))
    return sorted(front)


def _time(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _headline(o: Outcome) -> list[str]:
    lines = [
        f"polyserve tune: model {o.model}, p95 <= {o.slo_ms:g} ms over {o.protocol}, "
        f"budget {_time(o.budget_s)} (used {_time(o.elapsed_s)})",
        f"measured on: {o.machine.describe()}",
    ]
    winner, base = o.winner, o.baseline
    if winner is None:
        lines.append(f"no config met p95 <= {o.slo_ms:g} ms: nothing to recommend")
        return lines
    best = winner.best(o.slo_ms)
    assert best is not None
    lines += [
        f"winner: trial {winner.number}: {winner.candidate.describe()}",
        f"  capacity per replica: {winner.capacity:.0f} infer/s at p95 {best.p95_ms:.1f} ms "
        f"(concurrency {best.concurrency})",
    ]
    if base is not None:
        gain = f"{100 * (winner.capacity / base.capacity - 1):+.0f}%" if base.capacity else "n/a"
        lines.append(
            f"  your config (trial {base.number}): {base.capacity:.0f} infer/s; the winner: {gain}"
        )
    if o.reference_rate > 0:
        mine = winner.curve.latency_at(o.reference_rate)
        theirs = base.curve.latency_at(o.reference_rate) if base is not None else None
        lines.append(
            f"  p95 at {o.reference_rate:.0f} infer/s: "
            + (f"{mine:.1f} ms" if mine is not None else "not reached")
            + (f" (your config: {theirs:.1f} ms)" if theirs is not None else "")
        )
    base_size = o.space.base.max_batch_size
    if winner.candidate.max_batch_size and winner.candidate.max_batch_size < base_size:
        lines.append(
            f"  note: max_batch_size {base_size} -> {winner.candidate.max_batch_size}: client "
            "requests with larger batches would be refused"
        )
    return lines


_COLUMNS = (
    "trial",
    "state",
    "backend",
    "prec",
    "batcher",
    "mbs",
    "pref",
    "delay_us",
    "inst",
    "thr",
    "infer/s",
    "p95_ms",
    "c",
    "p95@rate",
    "load_s",
    "secs",
)


def _row(o: Outcome, t: searching.Trial) -> list[str]:
    c = t.candidate
    best = t.best(o.slo_ms)
    at_rate = t.curve.latency_at(o.reference_rate) if o.reference_rate > 0 else None
    mark = "*" if t is o.winner else ("=" if t.label else "")
    return [
        f"{t.number}{mark}",
        t.state,
        c.backend,
        c.precision,
        "on" if c.batching else "off",
        str(c.max_batch_size) if c.max_batch_size else "-",
        str(c.preferred_batch_size) if c.preferred_batch_size else "-",
        str(c.max_queue_delay_us) if c.batching else "-",
        str(c.instances),
        str(c.threads) if c.threads is not None else "-",
        f"{t.capacity:.0f}",
        f"{best.p95_ms:.2f}" if best is not None else "-",
        str(best.concurrency) if best is not None else "-",
        f"{at_rate:.2f}" if at_rate is not None else "-",
        f"{t.load_s:.2f}" if t.load_s is not None else "-",
        f"{t.seconds:.1f}",
    ]


def text(o: Outcome) -> str:
    """report.txt."""
    rows = [list(_COLUMNS)] + [_row(o, t) for t in o.trials]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines = [*_headline(o), "", *table, ""]
    notes = [t for t in o.trials if t.note or t.verdict is not None]
    if notes:
        lines.append("notes:")
        for t in notes:
            said = t.verdict.describe() if t.verdict is not None else t.note
            lines.append(f"  trial {t.number}: {said}")
        lines.append("")
    knobs = o.space.knobs()
    lines.append("searched: " + "; ".join(f"{k} {list(v)}" for k, v in knobs.items()))
    lines += [
        "",
        "* the winner; = your config. infer/s: the capacity, the best closed-loop throughput "
        "whose p95 met the SLO without errors (c: its concurrency); p95@rate: p95 at "
        f"{o.reference_rate:.0f} infer/s, interpolated. The load generator ran on the same "
        "machine as the worker and took CPU from it: a conservative capacity.",
    ]
    return "\n".join(lines) + "\n"


# ---- report.html -------------------------------------------------------------------------

_W, _H, _PAD = 720, 420, 56
_COLORS = {
    searching.MEASURED: "#4c78a8",
    searching.PRUNED: "#bbbbbb",
    searching.REJECTED: "#bbbbbb",
    searching.FAILED: "#bbbbbb",
}


def _chart(o: Outcome) -> str:
    points = [
        (p.infer_per_s, p.p95_ms)
        for t in o.trials
        for p in t.curve.points
        if p.p95_ms == p.p95_ms and p.errors == 0
    ]
    if not points:
        return "<p>No window was measured.</p>"
    x_max = max(r for r, _ in points) * 1.08 or 1.0
    y_max = max(max(p95 for _, p95 in points), o.slo_ms) * 1.1

    def x(rate: float) -> float:
        return _PAD + (_W - 2 * _PAD) * rate / x_max

    def y(p95: float) -> float:
        return _H - _PAD - (_H - 2 * _PAD) * p95 / y_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="white"/>',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="black"/>',
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="black"/>',
        f'<text x="{_W / 2}" y="{_H - 16}" text-anchor="middle">throughput (infer/s)</text>',
        f'<text x="16" y="{_H / 2}" transform="rotate(-90 16 {_H / 2})" '
        'text-anchor="middle">p95 latency (ms)</text>',
    ]
    for i in range(6):
        rate, p95 = x_max * i / 5, y_max * i / 5
        parts.append(
            f'<text x="{x(rate):.1f}" y="{_H - _PAD + 14}" text-anchor="middle">{rate:.0f}</text>'
        )
        parts.append(
            f'<text x="{_PAD - 6}" y="{y(p95) + 4:.1f}" text-anchor="end">{p95:.1f}</text>'
        )
    parts.append(
        f'<line x1="{_PAD}" y1="{y(o.slo_ms):.1f}" x2="{_W - _PAD}" y2="{y(o.slo_ms):.1f}" '
        'stroke="#e45756" stroke-dasharray="6 4"/>'
        f'<text x="{_W - _PAD}" y="{y(o.slo_ms) - 4:.1f}" text-anchor="end" fill="#e45756">'
        f"SLO p95 {o.slo_ms:g} ms</text>"
    )
    for t in o.trials:
        measured = [p for p in t.curve.points if p.p95_ms == p.p95_ms and p.errors == 0]
        if not measured:
            continue
        color, width = _COLORS.get(t.state, "#bbbbbb"), 1.2
        if t.label:
            color, width = "#f58518", 2.0
        if t is o.winner:
            color, width = "#54a24b", 3.0
        line = " ".join(f"{x(p.infer_per_s):.1f},{y(p.p95_ms):.1f}" for p in measured)
        title = html.escape(f"trial {t.number} ({t.state}): {t.candidate.describe()}")
        parts.append(
            f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="{width}">'
            f"<title>{title}</title></polyline>"
        )
        for p in measured:
            parts.append(
                f'<circle cx="{x(p.infer_per_s):.1f}" cy="{y(p.p95_ms):.1f}" r="2.5" '
                f'fill="{color}"><title>{title}: c={p.concurrency} {p.infer_per_s:.0f}/s '
                f"p95 {p.p95_ms:.2f} ms</title></circle>"
            )
    front = pareto(points)
    parts.append(
        '<polyline points="'
        + " ".join(f"{x(rate):.1f},{y(p95):.1f}" for rate, p95 in front)
        + '" fill="none" stroke="#b279a2" stroke-width="2" stroke-dasharray="3 2"/>'
    )
    for rate, p95 in front:
        parts.append(
            f'<rect x="{x(rate) - 3:.1f}" y="{y(p95) - 3:.1f}" width="6" height="6" '
            f'fill="#b279a2"><title>Pareto front: {rate:.0f}/s p95 {p95:.2f} ms</title></rect>'
        )
    legend = (
        ("#54a24b", "winner"),
        ("#f58518", "your config"),
        ("#4c78a8", "other trials"),
        ("#bbbbbb", "pruned / rejected"),
        ("#b279a2", "Pareto front of every point"),
    )
    for i, (color, label) in enumerate(legend):
        top = _PAD + 14 * i
        parts.append(
            f'<rect x="{_PAD + 10}" y="{top - 8}" width="10" height="10" fill="{color}"/>'
            f'<text x="{_PAD + 24}" y="{top + 1}">{label}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def page(o: Outcome) -> str:
    """report.html."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _row(o, t)) + "</tr>"
        for t in o.trials
    )
    summary_lines = "<br>".join(html.escape(line) for line in _headline(o))
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>polyserve tune: {html.escape(o.model)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:right}"
        "</style></head><body>"
        f"<h1>polyserve tune: {html.escape(o.model)}</h1><p>{summary_lines}</p>"
        f"{_chart(o)}<h2>Trials</h2><table><tr>{head}</tr>{body}</table>"
        f"<pre>{html.escape(text(o))}</pre></body></html>\n"
    )


def write(o: Outcome, folder: Path) -> list[Path]:
    """Every output file under ``folder``; the config files only when there is a winner."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    config = o.winner_config()
    if config is not None:
        best = o.winner.best(o.slo_ms) if o.winner is not None else None
        header = (
            f"# polyserve tune: {o.winner.capacity if o.winner else 0:.0f} infer/s per replica "
            f"at p95 {best.p95_ms if best else 0:.1f} ms (SLO {o.slo_ms:g} ms, {o.protocol}) on "
            f"{o.machine.describe()}\n"
        )
        path = folder / "config.pbtxt"
        named = model_config.ModelConfig()
        named.CopyFrom(config)
        named.name = o.model
        path.write_text(header + text_format.MessageToString(named))
        written.append(path)
        path = folder / "inferencemodel-config.yaml"
        path.write_text(
            "# spec.config of the InferenceModel (the operator fills in name and platform)\n"
            + header
            + yaml.safe_dump({"config": config_block(config)}, sort_keys=False)
        )
        written.append(path)
    for name, content in (
        ("result.json", json.dumps(summary(o), indent=2) + "\n"),
        ("trials.json", json.dumps(history(o), indent=1) + "\n"),
        ("report.txt", text(o)),
        ("report.html", page(o)),
    ):
        path = folder / name
        path.write_text(content)
        written.append(path)
    return written
