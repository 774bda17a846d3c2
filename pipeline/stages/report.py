"""`mer report`: one self-contained page per run, so a run can be judged without opening ten files.

It reads what the earlier stages already wrote (summary.json, the feature stores' report.json and
index.json, the training metrics and dvclive curves, the evaluation metrics and confusion pairs) and
renders the same content twice:

    report.html   one file, inline CSS and inline SVG figures: no external resource, no JavaScript
    report.md     the same tables, with each figure referenced as a .svg file written beside it

The page is built once as a list of sections made of small blocks (paragraph, table, figure), and the
two renderers only format those blocks, so the HTML and the Markdown cannot drift apart. The charts
are drawn here as plain SVG (matplotlib is not a dependency). Nothing in the output depends on the
time or the machine, so rerunning the stage on the same inputs gives the same bytes.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.errors import PipelineError
from pipeline.formats.stage_report import split_reasons

MODALITIES = ("text", "audio", "face")
SPLITS = ("train", "dev", "test")
HTML_FILE = "report.html"
MD_FILE = "report.md"
MAX_EXAMPLES = 5  # example utterance ids listed per reason; the count says how many there are in all
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SERIES_COLOURS = {"dev": PALETTE[0], "test": PALETTE[1], "train": PALETTE[2]}


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class StoreInputs:
    report: dict[str, Any]
    index: dict[str, Any]


@dataclass
class RunInputs:
    """Everything the page shows, read and checked up front so rendering cannot fail half-way."""

    corpus: str
    summary: dict[str, Any]
    stores: dict[str, StoreInputs]
    train_metrics: dict[str, Any]
    checkpoint: dict[str, Any]
    curves: dict[str, dict[str, list[tuple[float, float]]]]  # metric -> series label -> (step, value)
    eval_metrics: dict[str, Any]
    confusion_pairs: list[tuple[str, str]]  # (actual, predicted), one per test prediction


def _require(path: Path, stage: str) -> Path:
    """The path itself, or a one-line error that names it and the stage that makes it."""
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro {stage}` first")
    return path


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    _require(path, stage)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: unreadable JSON ({exc}): rerun `dvc repro {stage}`") from exc
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a JSON object: rerun `dvc repro {stage}`")
    return data


def _read_confusion_pairs(path: Path, stage: str) -> list[tuple[str, str]]:
    """The (actual, predicted) rows of confusion.csv; the matrix is counted from them here."""
    _require(path, stage)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"actual", "predicted"} <= set(reader.fieldnames):
            raise PipelineError(f"{path}: expected the columns actual,predicted: rerun `dvc repro {stage}`")
        return [(row["actual"], row["predicted"]) for row in reader]


def read_curves(folder: Path, stage: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """dvclive's per-step TSVs, grouped by metric name so that dev and test of one metric share a chart.

    `dev/accuracy.tsv` and `test/accuracy.tsv` become metric "accuracy" with series "dev" and "test";
    a file at the top (`lr.tsv`) is its own series.
    """
    _require(folder, stage)
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for path in sorted(folder.rglob("*.tsv")):
        relative = path.relative_to(folder)
        metric = path.stem
        series = "/".join(relative.parent.parts) or metric
        curves.setdefault(metric, {})[series] = _read_tsv(path, metric)
    if not curves:
        raise PipelineError(f"{folder}: no dvclive .tsv curves found: run `dvc repro {stage}` first")
    return curves


def _read_tsv(path: Path, metric: str) -> list[tuple[float, float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    points = []
    for row in rows:
        value = row.get(metric)
        if value is None:  # a column named otherwise: take the last one that is not step/timestamp
            value = next((v for k, v in reversed(row.items()) if k not in ("step", "timestamp")), None)
        try:
            points.append((float(row["step"]), float(value)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: expected numeric step and {metric} columns ({exc})") from exc
    return points


def load_inputs(
    corpus: str, prepared: Path, features: Path, train: Path, evaluation: Path
) -> RunInputs:
    """Read every input in pipeline order, so a missing one names the earliest stage to rerun."""
    summary = _read_json(prepared / "summary.json", f"prepare@{corpus}")
    stores = {}
    for modality in MODALITIES:
        stage = f"extract@{corpus}-{modality}"
        stores[modality] = StoreInputs(
            report=_read_json(features / modality / "report.json", stage),
            index=_read_json(features / modality / "index.json", stage),
        )
    train_metrics = _read_json(train / "metrics.json", f"train@{corpus}")
    checkpoint = _read_json(train / "best" / "checkpoint.json", f"train@{corpus}")
    curves = read_curves(train / "dvclive" / "plots" / "metrics", f"train@{corpus}")
    return RunInputs(
        corpus=corpus,
        summary=summary,
        stores=stores,
        train_metrics=train_metrics,
        checkpoint=checkpoint,
        curves=curves,
        eval_metrics=_read_json(evaluation / "metrics.json", f"evaluate@{corpus}"),
        confusion_pairs=_read_confusion_pairs(evaluation / "confusion.csv", f"evaluate@{corpus}"),
    )


# ---------------------------------------------------------------------------------------------
# page model: sections of blocks, rendered by both the HTML and the Markdown writer


@dataclass
class Paragraph:
    text: str
    warning: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: bool = True  # right-align cells after the first column


@dataclass
class Figure:
    name: str  # file stem of the .svg beside report.md
    caption: str
    svg: str


@dataclass
class Marker:
    """A vertical line at one epoch of a training curve."""

    x: float
    label: str
    colour: str
    dash: str


@dataclass
class Section:
    title: str
    blocks: list[Paragraph | Table | Figure] = field(default_factory=list)


def _f4(value: Any) -> str:
    """Scores as on the page: four decimals, or a dash when absent."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _short(sha: Any, n: int = 12) -> str:
    return str(sha)[:n] if sha else "—"


def lineage_section(run: RunInputs) -> Section:
    """Which checkpoint, code and data the numbers below belong to, and any disagreement between them."""
    ckpt = run.checkpoint
    code = ckpt.get("code", {})
    evaluated = run.eval_metrics.get("checkpoint", {})
    manifest_sha = ckpt.get("data", {}).get("manifest_sha256")
    commit = str(code.get("git_commit") or "—") + (" (uncommitted changes)" if code.get("git_dirty") else "")
    rows = [
        ["corpus", run.corpus],
        ["checkpoint", str(evaluated.get("path", "—"))],
        ["checkpoint epoch", str(ckpt.get("epoch", "—"))],
        ["seed", str(ckpt.get("seed", "—"))],
        ["git commit", commit],
        ["weights sha256", str(ckpt.get("weights_sha256", "—"))],
        ["manifest sha256", str(manifest_sha or "—")],
        ["label policy", str(run.summary.get("label_policy", "—"))],
    ]
    section = Section("Lineage", [Table(["field", "value"], rows, numeric=False)])
    for warning in _lineage_warnings(run, manifest_sha):
        section.blocks.append(Paragraph(warning, warning=True))
    return section


def _lineage_warnings(run: RunInputs, manifest_sha: str | None) -> list[str]:
    """Inputs from different runs would make the page lie: say so on the page instead."""
    warnings = []
    for modality, store in run.stores.items():
        store_sha = store.report.get("store", {}).get("manifest_sha256")
        if manifest_sha and store_sha and store_sha != manifest_sha:
            warnings.append(f"the {modality} store was extracted from manifest {_short(store_sha)}, "
                            f"the checkpoint was trained on {_short(manifest_sha)}")
    evaluated_epoch = run.eval_metrics.get("checkpoint", {}).get("epoch")
    best_epoch = run.train_metrics.get("best_epoch")
    if evaluated_epoch is not None and best_epoch is not None and evaluated_epoch != best_epoch:
        warnings.append(f"the evaluation scored epoch {evaluated_epoch}, training selected epoch {best_epoch}")
    return warnings


def corpus_section(run: RunInputs) -> Section:
    """Split sizes and label balance: the denominators behind every score below."""
    summary = run.summary
    splits = summary.get("splits", {})
    labels = list(summary.get("label_map", {})) or sorted({n for s in splits.values() for n in s.get("labels", {})})
    modalities = ("text", "audio", "video")
    header = ["split", "dialogues", "utterances", *labels, *(f"with {m}" for m in modalities)]
    rows = []
    for name in sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
        split = splits[name]
        rows.append([
            name, str(split.get("dialogues", 0)), str(split.get("utterances", 0)),
            *(str(split.get("labels", {}).get(label, 0)) for label in labels),
            *(str(split.get("modalities", {}).get(m, 0)) for m in modalities),
        ])
    if rows:
        totals = [sum(int(row[i]) for row in rows) for i in range(1, len(header))]
        rows.append(["all", *map(str, totals)])
    counts = summary.get("counts", {})
    count_rows = [[key.replace("_", " "), str(counts.get(key, "—"))]
                  for key in ("utterances_seen", "utterances_out", "excluded", "flagged")]
    count_rows[1][0] = "utterances kept"
    return Section("Corpus", [
        Paragraph(f"Split rule: {summary.get('split_rule', '—')}"),
        Table(header, rows),
        Table(["utterances", "count"], count_rows),
    ])


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_EXAMPLES])
    return shown + (f" … and {len(ids) - MAX_EXAMPLES} more" if len(ids) > MAX_EXAMPLES else "")


def reason_rows(run: RunInputs) -> list[list[str]]:
    """One row per (where, what, reason): count and a capped list of example utterance ids."""
    rows: list[list[str]] = []
    summary = run.summary
    flagged: dict[str, list[str]] = {}
    for entry in summary.get("flagged", []):
        for flag in entry.get("flags", []):
            flagged.setdefault(flag, []).append(entry.get("utterance_id", "?"))
    excluded: dict[str, list[str]] = {}
    for entry in summary.get("excluded", []):
        excluded.setdefault(entry.get("reason", "?"), []).append(entry.get("utterance_id", "?"))
    for what, counts, examples in (("flagged", summary.get("flag_counts", {}), flagged),
                                   ("excluded", summary.get("exclusion_counts", {}), excluded)):
        for reason in sorted(set(counts) | set(examples)):
            count = counts.get(reason, len(examples.get(reason, [])))
            rows.append(["prepare", what, reason, str(count), _examples(examples.get(reason, []))])
    for modality, store in run.stores.items():
        for what in ("missing", "flagged"):
            by_reason: dict[str, list[str]] = {}
            for entry in store.report.get(what, []):
                for reason in split_reasons(entry.get("reason", "")) or ["(no reason given)"]:
                    by_reason.setdefault(reason, []).append(entry.get("utterance_id", "?"))
            for reason in sorted(by_reason):
                ids = by_reason[reason]
                rows.append([f"{modality} store", what, reason, str(len(ids)), _examples(ids)])
    return rows


def reasons_section(run: RunInputs) -> Section:
    """Why utterances were dropped or are suspect, so a low score can be traced to bad inputs."""
    rows = reason_rows(run)
    blocks: list[Paragraph | Table | Figure] = [Paragraph(
        "Excluded utterances are not in the manifest; flagged ones are kept but suspect. A store's "
        "missing utterances have no feature in that modality (the model sees them without it); "
        "its flagged ones have a feature that may be poor."
    )]
    if rows:
        blocks.append(Table(["stage", "kind", "reason", "count", f"examples (first {MAX_EXAMPLES})"],
                            rows, numeric=False))
    else:
        blocks.append(Paragraph("No utterance was excluded, flagged or left without a feature."))
    return Section("Flagged, excluded and missing utterances", blocks)


def _dims(index: dict[str, Any]) -> str:
    shapes = Counter(tuple(u.get("shape", ())) for u in index.get("utterances", {}).values())
    return ", ".join("×".join(map(str, shape)) or "scalar" for shape in sorted(shapes)) or "—"


def stores_section(run: RunInputs) -> Section:
    """What produced each modality's features, and how many utterances actually have one."""
    rows = []
    for modality, store in run.stores.items():
        meta = store.report.get("store", {})
        counts = store.report.get("counts", {})
        stored, total = counts.get("out", 0), counts.get("in", 0)
        coverage = f"{stored} / {total}" + (f" ({100 * stored / total:.1f}%)" if total else "")
        extractor = f"{meta.get('extractor', '—')} v{meta.get('extractor_version', '?')}"
        rows.append([
            modality, extractor, str(meta.get("model_id", "—")), _short(meta.get("model_sha256")),
            _dims(store.index), str(meta.get("dtype", "—")), coverage, str(len(store.index.get("shards", []))),
        ])
    header = ["modality", "extractor", "model", "model sha256", "feature dims", "dtype", "coverage", "shards"]
    return Section("Feature stores", [Table(header, rows, numeric=False)])


def _curve_order(metric: str, series: dict[str, Any]) -> tuple[int, str]:
    """Scores first (they have dev/test series), then the training losses, then the rest (lr)."""
    if {"dev", "test"} & set(series):
        return (0, metric)
    return (1 if "train" in series else 2, metric)


def curves_section(run: RunInputs) -> Section:
    """Per-epoch curves with the dev-selected and the test-oracle epochs marked."""
    best = run.train_metrics.get("best_epoch")
    oracle = run.train_metrics.get("test_best_epoch_oracle", {}).get("epoch")
    markers = []
    if isinstance(best, (int, float)):
        markers.append(Marker(float(best), f"selected epoch {best} (dev)", "#000000", "6 3"))
    if isinstance(oracle, (int, float)):
        markers.append(Marker(float(oracle), f"test-oracle epoch {oracle} (not used)", "#888888", "2 3"))
    section = Section("Training curves", [Paragraph(
        "One point per epoch (dvclive). The dashed line is the epoch selected on dev, whose checkpoint "
        "is evaluated below; the dotted line is the best epoch on test, shown only for reference."
    )])
    for metric in sorted(run.curves, key=lambda m: _curve_order(m, run.curves[m])):
        series = run.curves[metric]
        section.blocks.append(Figure(f"curve-{_slug(metric)}", metric, line_chart_svg(metric, series, markers)))
    return section


def _labels(run: RunInputs) -> list[str]:
    """Class order: the evaluation's (the label map's), then any name only the confusion pairs have."""
    labels = list(run.eval_metrics.get("test", {}).get("per_class_f1", {}))
    labels = labels or list(run.checkpoint.get("label_names", []))
    for actual, predicted in run.confusion_pairs:
        for name in (actual, predicted):
            if name not in labels:
                labels.append(name)
    return labels


def confusion_matrix(labels: list[str], pairs: list[tuple[str, str]]) -> list[list[int]]:
    counts = Counter(pairs)
    return [[counts[(actual, predicted)] for predicted in labels] for actual in labels]


def confusion_section(run: RunInputs) -> Section:
    labels = _labels(run)
    matrix = confusion_matrix(labels, run.confusion_pairs)
    return Section("Test confusion matrix", [
        Paragraph(f"{len(run.confusion_pairs)} test utterances; rows: actual class, columns: predicted class."),
        Figure("confusion-test", "test confusion matrix (selected epoch)", confusion_svg(labels, matrix)),
    ])


def scores_section(run: RunInputs) -> Section:
    """Dev and test scores of the selected checkpoint, and how far the (unused) test oracle is from it."""
    dev, test = run.eval_metrics.get("dev", {}), run.eval_metrics.get("test", {})
    overall = [[name, _f4(dev.get(key)), _f4(test.get(key))]
               for name, key in (("accuracy", "accuracy"), ("weighted F1", "weighted_f1"), ("macro F1", "macro_f1"))]
    labels = _labels(run)
    dev_gold = dev.get("counts", {}).get("gold", {})
    test_gold = test.get("counts", {}).get("gold", {})
    per_class = [[label, _f4(dev.get("per_class_f1", {}).get(label)), str(dev_gold.get(label, "—")),
                  _f4(test.get("per_class_f1", {}).get(label)), str(test_gold.get(label, "—"))] for label in labels]
    train = run.train_metrics
    oracle = train.get("test_best_epoch_oracle", {})
    selected_dev, selected_test = train.get("dev", {}), train.get("test", {})
    epochs = [
        ["selected on dev (evaluated)", str(train.get("best_epoch", "—")), _f4(selected_dev.get("weighted_f1")),
         _f4(selected_test.get("weighted_f1")), _f4(selected_test.get("macro_f1"))],
        ["test oracle (NOT used for selection)", str(oracle.get("epoch", "—")),
         _f4(_curve_value(run, "weighted_f1", "dev", oracle.get("epoch"))),
         _f4(oracle.get("weighted_f1")), _f4(oracle.get("macro_f1"))],
    ]
    stopped = " (stopped early)" if train.get("stopped_early") else ""
    return Section("Scores", [
        Table(["metric", "dev", "test"], overall),
        Table(["class", "dev F1", "dev support", "test F1", "test support"], per_class),
        Paragraph(f"Epochs run: {train.get('epochs_run', '—')}{stopped}. The test-oracle epoch is the epoch with "
                  "the best test weighted F1; it is an upper bound for reference only and is NOT used to pick "
                  "the checkpoint."),
        Table(["which epoch", "epoch", "dev weighted F1", "test weighted F1", "test macro F1"], epochs),
    ])


def _curve_value(run: RunInputs, metric: str, series: str, step: Any) -> float | None:
    """One epoch's value from the dvclive curves (the oracle epoch's dev score is only there)."""
    for x, y in run.curves.get(metric, {}).get(series, []):
        if step is not None and x == step:
            return y
    return None


def build_sections(run: RunInputs) -> list[Section]:
    return [lineage_section(run), corpus_section(run), reasons_section(run), stores_section(run),
            curves_section(run), confusion_section(run), scores_section(run)]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "metric"


# ---------------------------------------------------------------------------------------------
# SVG figures


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:.4g}"


def line_chart_svg(title: str, series: dict[str, list[tuple[float, float]]], markers: Sequence[Marker] = (),
                   width: int = 420, height: int = 250) -> str:
    """Lines of value against step, with axes, round ticks, vertical epoch markers and a legend."""
    left, right, top, bottom = 58, 14, 26, 40
    points = {name: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)] for name, pts in series.items()}
    xs = [x for pts in points.values() for x, _ in pts] + [m.x for m in markers]
    ys = [y for pts in points.values() for _, y in pts]
    x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    y_ticks = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))
    legend = [(name, _series_colour(name, i), "") for i, name in enumerate(points)] + \
        [(m.label, m.colour, m.dash) for m in markers]
    slots = _legend_layout([label for label, _, _ in legend], left, width - right)
    total_height = height + 16 * (1 + max((row for _, row in slots), default=-1))
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * plot_h

    parts = [_svg_open(width, total_height, f"{title} per epoch"),
             f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-weight="bold">{_esc(title)}</text>',
             f'<rect class="frame" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for y in y_ticks:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{_esc(_tick_label(y))}</text>')
    base = top + plot_h
    for x in x_ticks:
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{base}" y2="{base + 4}" stroke="#999"/>')
        parts.append(f'<text x="{sx(x):.1f}" y="{base + 16}" text-anchor="middle">{_esc(_tick_label(x))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 32}" text-anchor="middle">epoch (step)</text>')
    for marker in markers:
        parts.append(f'<line class="marker" x1="{sx(marker.x):.1f}" x2="{sx(marker.x):.1f}" y1="{top}" '
                     f'y2="{top + plot_h}" stroke="{marker.colour}" stroke-dasharray="{marker.dash}"/>')
    for i, (name, pts) in enumerate(points.items()):
        colour = _series_colour(name, i)
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8">'
                     f'<title>{_esc(name)}</title></polyline>')
        if len(pts) == 1:  # a single epoch draws no line: show the point
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" fill="{colour}"/>')
    for (label, colour, dash), (lx, row) in zip(legend, slots):
        ly = height + 4 + 16 * row
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
                     f'stroke-width="2"{dash_attr}/>')
        parts.append(f'<text x="{lx + 22:.1f}" y="{ly}">{_esc(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _legend_layout(labels: list[str], start: float, end: float) -> list[tuple[float, int]]:
    """(x, row) of each legend entry: entries flow left to right and wrap before the right edge."""
    slots, x, row = [], start, 0
    for label in labels:
        need = 22 + 6.5 * len(label) + 14  # sample line, text at ~6.5 px a character, gap
        if x > start and x + need > end:
            x, row = start, row + 1
        slots.append((x, row))
        x += need
    return slots


def _series_colour(name: str, i: int) -> str:
    return SERIES_COLOURS.get(name.split("/")[0], PALETTE[(i + 3) % len(PALETTE)])


def _svg_open(width: int, height: int, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(label)}" '
            'font-family="sans-serif" font-size="11">')


def confusion_svg(labels: list[str], matrix: list[list[int]]) -> str:
    """A heatmap, one rect per (actual, predicted) cell, darker for more; counts written in the cells."""
    n = len(labels)
    cell = 40 if n <= 10 else max(14, 400 // max(n, 1))
    longest = max((len(label) for label in labels), default=1)
    left, top = 30 + 7 * longest, 30
    bottom = 24 + 6 * longest
    width, height = left + n * cell + 12, top + n * cell + bottom
    peak = max((v for row in matrix for v in row), default=0) or 1
    parts = [_svg_open(width, height, "confusion matrix"),
             f'<text x="{left + n * cell / 2:.1f}" y="18" text-anchor="middle" font-weight="bold">'
             "test: actual (rows) × predicted (columns)</text>"]
    for r, actual in enumerate(labels):
        for c, predicted in enumerate(labels):
            value = matrix[r][c]
            share = value / peak
            x, y = left + c * cell, top + r * cell
            edge = ' stroke="#333" stroke-width="1.5"' if r == c else ' stroke="#ccc"'
            parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="{_blue(share)}"{edge}>'
                         f"<title>{_esc(f'actual {actual}, predicted {predicted}: {value}')}</title></rect>")
            ink = "#fff" if share > 0.55 else "#000"
            parts.append(f'<text class="count" x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" '
                         f'text-anchor="middle" fill="{ink}">{value}</text>')
        row_y = top + r * cell + cell / 2 + 4
        parts.append(f'<text x="{left - 6}" y="{row_y:.1f}" text-anchor="end">{_esc(actual)}</text>')
    for c, predicted in enumerate(labels):
        x, y = left + c * cell + cell / 2, top + n * cell + 8
        parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="end" '
                     f'transform="rotate(-45 {x:.1f} {y:.1f})">{_esc(predicted)}</text>')
    parts.append(f'<text x="12" y="{top + n * cell / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + n * cell / 2:.1f})">actual</text>')
    parts.append(f'<text x="{left + n * cell / 2:.1f}" y="{height - 4}" text-anchor="middle">predicted</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _blue(share: float) -> str:
    """White at 0 to dark blue at 1."""
    low, high = (255, 255, 255), (8, 81, 156)
    r, g, b = (round(a + (z - a) * share) for a, z in zip(low, high))
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------------------------------------
# renderers

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
table.numeric td + td { text-align: right; font-variant-numeric: tabular-nums; }
p.warning { background: #fff3cd; border: 1px solid #e0c36a; padding: .4em .6em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figcaption { font-size: .85em; color: #555; text-align: center; }
footer { margin-top: 2em; font-size: .8em; color: #666; }
""".strip()


def render_html(corpus: str, sections: list[Section], sources: list[str]) -> str:
    """One page, no external resource: CSS in <style>, figures as inline <svg>."""
    body = [f"<h1>Run report: {_esc(corpus)}</h1>"]
    for section in sections:
        body.append(f'<section id="{_slug(section.title)}">\n<h2>{_esc(section.title)}</h2>')
        body.extend(_html_block(block) for block in section.blocks)
        body.append("</section>")
    body.append("<footer>Generated by <code>mer report</code> from: "
                + ", ".join(f"<code>{_esc(s)}</code>" for s in sources) + "</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>Run report: {_esc(corpus)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _html_block(block: Paragraph | Table | Figure) -> str:
    if isinstance(block, Paragraph):
        return f'<p class="warning">Warning: {_esc(block.text)}</p>' if block.warning else f"<p>{_esc(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_esc(h)}</th>" for h in block.header)
        rows = "\n".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        css = ' class="numeric"' if block.numeric else ""
        return f"<table{css}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
    return f"<figure>\n{block.svg}\n<figcaption>{_esc(block.caption)}</figcaption>\n</figure>"


def _md_cell(text: str) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(corpus: str, sections: list[Section], sources: list[str]) -> str:
    """The same sections as the HTML page; figures are the .svg files beside it."""
    lines = [f"# Run report: {_md_cell(corpus)}", ""]
    for section in sections:
        lines += [f"## {_md_cell(section.title)}", ""]
        for block in section.blocks:
            lines += _md_block(block) + [""]
    lines.append("Generated by `mer report` from: " + ", ".join(f"`{s}`" for s in sources))
    return "\n".join(lines) + "\n"


def _md_block(block: Paragraph | Table | Figure) -> list[str]:
    if isinstance(block, Paragraph):
        return [f"> **Warning:** {_md_cell(block.text)}" if block.warning else _md_cell(block.text)]
    if isinstance(block, Table):
        align = ["---"] + [("---:" if block.numeric else "---")] * (len(block.header) - 1)
        return ["| " + " | ".join(map(_md_cell, block.header)) + " |", "| " + " | ".join(align) + " |",
                *("| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows)]
    return [f"![{_md_cell(block.caption)}]({block.name}.svg)"]


# ---------------------------------------------------------------------------------------------
# entry point


def write_run_report(
    corpus: str, prepared: Path, features: Path, train: Path, evaluation: Path, out: Path
) -> list[Path]:
    """Write out/report.html, out/report.md and its .svg figures, all at once or not at all."""
    prepared, features, train, evaluation, out = map(Path, (prepared, features, train, evaluation, out))
    run = load_inputs(corpus, prepared, features, train, evaluation)
    sections = build_sections(run)
    sources = [str(p) for p in (prepared, features, train, evaluation)]
    figures = [block for section in sections for block in section.blocks if isinstance(block, Figure)]
    with atomic_output_dir(out) as tmp:
        (tmp / HTML_FILE).write_text(render_html(corpus, sections, sources), encoding="utf-8")
        (tmp / MD_FILE).write_text(render_markdown(corpus, sections, sources), encoding="utf-8")
        for figure in figures:
            (tmp / f"{figure.name}.svg").write_text(figure.svg + "\n", encoding="utf-8")
    return [out / HTML_FILE, out / MD_FILE]
