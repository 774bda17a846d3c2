"""`mer report`: one self-contained page per run, so a run can be judged without opening ten files.

It reads what the earlier stages already wrote (summary.json, the feature stores' report.json and
index.json, the training metrics and dvclive curves, the evaluation metrics and confusion pairs) and
renders the same content twice:

    report.html   one file, inline CSS and inline SVG figures: no external resource, no JavaScript
    report.md     the same tables, with each figure referenced as a .svg file written beside it

The page is built once as a list of sections made of small blocks (paragraph, table, chart), and the
two jinja2 templates (templates/report.html.j2, report.md.j2) only format those blocks, so the HTML
and the Markdown cannot drift apart. The charts are matplotlib SVG drawn under fixed settings, with no
date and fixed ids, so rerunning the stage on the same inputs gives the same bytes (DVC then sees no
change).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from xml.dom import minidom

import matplotlib
import matplotlib.style
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.locks import output_lock
from pipeline.core.outputs import check_output
from pipeline.core.errors import PipelineError
from pipeline.core.params import MODALITIES
from pipeline.formats.feature_store import INDEX_FILE
from pipeline.formats.manifest import SUMMARY_FILE
from pipeline.formats.run_files import BEST_DIR, CHECKPOINT_JSON, METRICS_FILE
from pipeline.formats.stage_report import REPORT_FILE, split_reasons

SPLITS = ("train", "dev", "test")
HTML_FILE = "report.html"
MD_FILE = "report.md"
MAX_EXAMPLES = 5  # example utterance ids listed per reason; the count says how many there are in all
LEGACY_MODEL = "cmath"  # the model of a checkpoint written before checkpoints named their model
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
    summary = _read_json(prepared / SUMMARY_FILE, f"prepare@{corpus}")
    checkpoint = _read_json(train / BEST_DIR / CHECKPOINT_JSON, f"train@{corpus}")
    # the feature set each modality was trained on (train.features), named after the modality by default
    feature_sets = (checkpoint.get("train_config") or {}).get("features") or {}
    stores = {}
    for modality in MODALITIES:
        feature_set = feature_sets.get(modality, modality)
        stage = f"extract_{corpus}@{feature_set}"
        stores[modality] = StoreInputs(
            report=_read_json(features / feature_set / REPORT_FILE, stage),
            index=_read_json(features / feature_set / INDEX_FILE, stage),
        )
    train_metrics = _read_json(train / METRICS_FILE, f"train@{corpus}")
    curves = read_curves(train / "dvclive" / "plots" / "metrics", f"train@{corpus}")
    return RunInputs(
        corpus=corpus,
        summary=summary,
        stores=stores,
        train_metrics=train_metrics,
        checkpoint=checkpoint,
        curves=curves,
        eval_metrics=_read_json(evaluation / METRICS_FILE, f"evaluate@{corpus}"),
        confusion_pairs=_read_confusion_pairs(evaluation / "confusion.csv", f"evaluate@{corpus}"),
    )


# ---------------------------------------------------------------------------------------------
# page model: sections of blocks, rendered by both the HTML and the Markdown writer


@dataclass
class Paragraph:
    kind: ClassVar[str] = "paragraph"  # what the templates switch on
    text: str
    warning: bool = False


@dataclass
class Table:
    kind: ClassVar[str] = "table"
    header: list[str]
    rows: list[list[str]]
    numeric: bool = True  # right-align cells after the first column


@dataclass
class Chart:
    kind: ClassVar[str] = "chart"
    name: str  # file stem of the .svg beside report.md, and the prefix of the ids inside the SVG
    caption: str
    svg: str


@dataclass
class Marker:
    """A vertical line at one epoch of a training curve."""

    x: float
    label: str
    colour: str
    dash: tuple[float, float]  # matplotlib's (on, off) dash pattern


@dataclass
class Section:
    title: str
    blocks: list[Paragraph | Table | Chart] = field(default_factory=list)


def _f4(value: Any) -> str:
    """Scores as on the page: four decimals, or a dash when absent."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _short(sha: Any, n: int = 12) -> str:
    return str(sha)[:n] if sha else "—"


def model_name(run: RunInputs) -> str:
    """The trained model's name (`train.model.name`), as the checkpoint records it."""
    return str(run.checkpoint.get("model_name") or run.train_metrics.get("model") or LEGACY_MODEL)


def lineage_section(run: RunInputs) -> Section:
    """Which checkpoint, code and data the numbers below belong to, and any disagreement between them."""
    ckpt = run.checkpoint
    code = ckpt.get("code", {})
    evaluated = run.eval_metrics.get("checkpoint", {})
    manifest_sha = ckpt.get("data", {}).get("manifest_sha256")
    commit = str(code.get("git_commit") or "—") + (" (uncommitted changes)" if code.get("git_dirty") else "")
    rows = [
        ["corpus", run.corpus],
        ["model", model_name(run)],
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
    trained, evaluated = model_name(run), run.eval_metrics.get("checkpoint", {}).get("model")
    if evaluated is not None and evaluated != trained:
        warnings.append(f"the evaluation scored a {evaluated} checkpoint, the training folder holds {trained}")
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
    blocks: list[Paragraph | Table | Chart] = [Paragraph(
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
            modality, str(meta.get("feature_set") or modality), extractor, str(meta.get("model_id", "—")), _short(meta.get("model_sha256")),
            _dims(store.index), str(meta.get("dtype", "—")), coverage, str(len(store.index.get("shards", []))),
        ])
    header = ["modality", "feature set", "extractor", "model", "model sha256", "feature dims", "dtype", "coverage",
              "shards"]
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
        markers.append(Marker(float(best), f"selected epoch {best} (dev)", "#000000", (6, 3)))
    if isinstance(oracle, (int, float)):
        markers.append(Marker(float(oracle), f"test-oracle epoch {oracle} (not used)", "#888888", (2, 3)))
    section = Section("Training curves", [Paragraph(
        "One point per epoch (dvclive). The dashed line is the epoch selected on dev, whose checkpoint "
        "is evaluated below; the dotted line is the best epoch on test, shown only for reference."
    )])
    for metric in sorted(run.curves, key=lambda m: _curve_order(m, run.curves[m])):
        series = run.curves[metric]
        name = f"curve-{_slug(metric)}"
        section.blocks.append(Chart(name, metric, curve_chart_svg(name, metric, series, markers)))
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
        Chart("confusion-test", "test confusion matrix (selected epoch)",
              confusion_chart_svg("confusion-test", labels, matrix)),
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
# figures: matplotlib, rendered to SVG text that is the same bytes on every run

# Every figure is drawn under matplotlib's defaults plus these (a user's matplotlibrc is ignored):
# text stays <text> (small, searchable), a "$" in a label is a dollar sign, the font is the one
# matplotlib ships, and the hashed ids of clip paths and markers come from a fixed salt.
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "mer-report",
    "text.parse_math": False,
    "font.family": "DejaVu Sans",
    "font.size": 9,
}
# No date and no Dublin Core block at all (it would name the matplotlib version and web addresses).
_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def _to_svg(fig: Figure, name: str, title: str) -> str:
    """The figure as one <svg> element, its ids prefixed with `name`.

    matplotlib numbers its groups from 1 in every figure (`axes_1`, `line2d_1`, ...), so figures
    inlined in one page would repeat ids; the prefix keeps every id on the page unique and every
    `#id` reference pointing into its own figure.
    """
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_SVG_METADATA)
    text = buffer.getvalue()
    document = minidom.parseString(text[text.index("<svg"):])  # no XML prolog or DOCTYPE
    root = document.documentElement
    for element in root.getElementsByTagName("*"):
        for attr in list(element.attributes.values()):
            if attr.name == "id":
                attr.value = f"{name}-{attr.value}"
            elif attr.name in ("href", "xlink:href") and attr.value.startswith("#"):
                attr.value = f"#{name}-{attr.value[1:]}"
            else:
                attr.value = attr.value.replace("url(#", f"url(#{name}-")
    root.setAttribute("id", name)
    root.setAttribute("role", "img")
    heading = root.insertBefore(document.createElement("title"), root.firstChild)  # its accessible name
    heading.appendChild(document.createTextNode(title))
    return root.toxml()


def _series_colour(name: str, i: int) -> str:
    return SERIES_COLOURS.get(name.split("/")[0], PALETTE[(i + 3) % len(PALETTE)])


def curve_chart_svg(name: str, title: str, series: dict[str, list[tuple[float, float]]],
                    markers: Sequence[Marker] = ()) -> str:
    """Value against epoch, one line (with a dot per epoch) per series, vertical epoch markers, a legend.

    In the SVG each series is the group `<name>-series-<i>` and each marker `<name>-marker-<i>`, in
    the order given; points that are not finite are left out.
    """
    with matplotlib.style.context(["default", _RC]):
        fig = Figure(figsize=(5.8, 3.6), layout="constrained")
        ax = fig.add_subplot()
        for i, (label, points) in enumerate(series.items()):
            finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
            ax.plot([x for x, _ in finite], [y for _, y in finite], color=_series_colour(label, i), marker="o",
                    markersize=3.5, linewidth=1.8, label=label, gid=f"series-{i}")
        for i, marker in enumerate(markers):
            ax.axvline(marker.x, color=marker.colour, linestyle=(0, marker.dash), linewidth=1.2,
                       label=marker.label, gid=f"marker-{i}")
        ax.set_title(title, fontweight="bold")
        ax.set_xlabel("epoch (step)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, color="#eeeeee")
        ax.set_axisbelow(True)
        fig.legend(loc="outside lower center", ncols=2, frameon=False)
        return _to_svg(fig, name, f"{title} per epoch")


def confusion_chart_svg(name: str, labels: list[str], matrix: list[list[int]]) -> str:
    """A heatmap, darker for more, with each count written in its cell; the diagonal is outlined.

    In the SVG the count of (actual row r, predicted column c) is the text of group `<name>-count-r-c`,
    and the class names are the groups `<name>-actual-r` and `<name>-predicted-c`.
    """
    n = len(labels)
    peak = max((v for row in matrix for v in row), default=0) or 1
    blues = matplotlib.colormaps["Blues"]
    side = 2.2 + 0.5 * n + 0.06 * max((len(label) for label in labels), default=0)
    with matplotlib.style.context(["default", _RC]):
        fig = Figure(figsize=(side, side), layout="constrained")
        ax = fig.add_subplot()
        for r in range(n):
            for c in range(n):
                share = matrix[r][c] / peak
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor=blues(share),
                                       edgecolor="#333333" if r == c else "#cccccc",
                                       linewidth=1.5 if r == c else 0.5, zorder=1.5 if r == c else 1,
                                       gid=f"cell-{r}-{c}"))
                ax.text(c, r, str(matrix[r][c]), ha="center", va="center",
                        color="white" if share > 0.55 else "black", gid=f"count-{r}-{c}")
        ax.set_xlim(-0.5, max(n, 1) - 0.5)
        ax.set_ylim(max(n, 1) - 0.5, -0.5)
        ax.set_aspect("equal")
        ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), labels)
        for axis, kind in ((ax.xaxis, "predicted"), (ax.yaxis, "actual")):
            for i, tick in enumerate(axis.get_ticklabels()):
                tick.set_gid(f"{kind}-{i}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title("test: actual (rows) × predicted (columns)", fontweight="bold")
        return _to_svg(fig, name, "confusion matrix")


# ---------------------------------------------------------------------------------------------
# renderers: one jinja2 template per format, over the same sections


def _md_cell(text: Any) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html.j2"], default=False),  # report.md.j2 escapes with the md filter
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.filters.update(slug=_slug, md=_md_cell)


def render_html(corpus: str, sections: list[Section], sources: list[str], model: str = LEGACY_MODEL) -> str:
    """One page, no external resource: CSS in <style>, figures as inline <svg>."""
    return _TEMPLATES.get_template("report.html.j2").render(corpus=corpus, model=model, sections=sections,
                                                            sources=sources)


def render_markdown(corpus: str, sections: list[Section], sources: list[str], model: str = LEGACY_MODEL) -> str:
    """The same sections as the HTML page; figures are the .svg files beside it."""
    return _TEMPLATES.get_template("report.md.j2").render(corpus=corpus, model=model, sections=sections,
                                                          sources=sources)


# ---------------------------------------------------------------------------------------------
# entry point


def write_run_report(
    corpus: str, prepared: Path, features: Path, train: Path, evaluation: Path, out: Path, wait_s: float = 0.0
) -> list[Path]:
    """Write out/report.html, out/report.md and its .svg figures, all at once or not at all; the run
    holds `out`'s lock (`pipeline.core.locks`), waiting up to `wait_s` seconds for another run on it."""
    prepared, features, train, evaluation, out = map(Path, (prepared, features, train, evaluation, out))
    check_output(out, "report", [("--prepared", prepared), ("--features", features), ("--train", train),
                                 ("--eval", evaluation)])
    with output_lock(out, "report", wait_s):
        return _write_run_report(corpus, prepared, features, train, evaluation, out)


def _write_run_report(
    corpus: str, prepared: Path, features: Path, train: Path, evaluation: Path, out: Path
) -> list[Path]:
    run = load_inputs(corpus, prepared, features, train, evaluation)
    sections = build_sections(run)
    sources = [str(p) for p in (prepared, features, train, evaluation)]
    charts = [block for section in sections for block in section.blocks if isinstance(block, Chart)]
    model = model_name(run)
    with atomic_output_dir(out, "report") as tmp:
        (tmp / HTML_FILE).write_text(render_html(corpus, sections, sources, model), encoding="utf-8")
        (tmp / MD_FILE).write_text(render_markdown(corpus, sections, sources, model), encoding="utf-8")
        for chart in charts:
            (tmp / f"{chart.name}.svg").write_text(chart.svg + "\n", encoding="utf-8")
    return [out / HTML_FILE, out / MD_FILE]
