"""`mer report` (pipeline/stages/report.py): a self-contained page whose numbers are the run's own.

The run is real but small: the trainer's synthetic corpus (tests/helpers/train_corpus.py) with real feature
stores, two epochs of real training (which writes dvclive curves), a real `mer evaluate`, and a
summary.json made by the real `build_summary` from the manifest's utterances.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import matplotlib
import pytest

from pipeline.stages.train import TrainConfig, train
from pipeline.cli import main
from pipeline.formats.manifest import SUMMARY_FILE, CorpusReadResult, Exclusion, Utterance, build_summary, read_manifest
from pipeline.stages.report import (
    Marker,
    RunInputs,
    StoreInputs,
    confusion_chart_svg,
    curve_chart_svg,
    reason_rows,
    write_run_report,
)
from tests.helpers.report_page import PageParser, page_svgs, page_table, parse_page
from tests.helpers.train_corpus import DIMS, LABELS, make_corpus

SVG = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
CONFIG = {
    "seed": 0, "epochs": 2, "lr": 0.003, "batch_size": 2, "patience": 0, "mixed_precision": "no",
    "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def _write_summary(prepared: Path) -> dict:
    """summary.json as `mer prepare` writes it, with one flagged and one excluded utterance to show."""
    fields = {f.name for f in dataclasses.fields(Utterance)} - {"sources"}
    utterances = [Utterance(**{k: v for k, v in row.items() if k in fields}) for row in read_manifest(prepared)]
    utterances[0].flag("unreadable_clip")
    result = CorpusReadResult(
        corpus="meld", label_policy="synthetic", label_names=LABELS, utterances=utterances,
        excluded=[Exclusion(split="test", utterance_id="test_dia999_utt0", reason="label 'xxx' not in policy")],
        split_rule="synthetic", utterances_seen=len(utterances) + 1,
    )
    summary = build_summary(result, str(prepared))
    (prepared / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A trained and evaluated run: {prepared, features, train, eval}."""
    root = tmp_path_factory.mktemp("run")
    prepared, features = make_corpus(root, dialogues={"train": 12, "dev": 7, "test": 9}, missing={"face": 0.2})
    _write_summary(prepared)
    train("meld", prepared, features, root / "train", TrainConfig(**CONFIG), log=lambda line: None)
    code = main(["evaluate", "--checkpoint", str(root / "train/best"), "--prepared", str(prepared),
                 "--features", str(features), "--out", str(root / "eval")])
    assert code == 0
    return {"prepared": prepared, "features": features, "train": root / "train", "eval": root / "eval"}


@pytest.fixture(scope="module")
def report(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "meld"
    code = main(["report", "--corpus", "meld", "--prepared", str(run["prepared"]), "--features", str(run["features"]),
                 "--train", str(run["train"]), "--eval", str(run["eval"]), "--out", str(out)])
    assert code == 0
    return out


def _external_references(html_text: str) -> list[str]:
    """Whatever in the page could load something from outside it; `#id` links to the page's own ids
    (matplotlib's clip paths and reused markers) are fine, and must resolve."""
    parser = parse_page(html_text)
    ids = [value for _, name, value in parser.attrs if name == "id"]
    found = [f"duplicate id {i}" for i, n in Counter(ids).items() if n > 1]
    tags = {tag for tag, _, _ in parser.attrs} | {t.lower() for t in re.findall(r"<([A-Za-z]+)", html_text)}
    found += [f"<{tag}>" for tag in sorted(tags & {"img", "image", "script", "link", "iframe", "object", "embed",
                                                    "foreignobject", "audio", "video", "source"})]
    for tag, name, value in parser.attrs:
        if name in ("src", "href", "xlink:href", "srcset", "data", "action", "poster", "background"):
            if not (value or "").startswith("#") or value[1:] not in ids:
                found.append(f"<{tag} {name}={value!r}>")
        elif value and re.search(r"(?i)\b(https?|file|data|ftp):", value):
            if not (tag == "svg" and (name == "xmlns" or name.startswith("xmlns:"))):  # namespace names
                found.append(f"<{tag} {name}={value!r}>")
    for target in re.findall(r"url\(\s*['\"]?([^)'\"]*)", html_text):
        if not target.startswith("#") or target[1:] not in ids:
            found.append(f"url({target})")
    return found + (["@import"] if "@import" in html_text else [])


def test_report_files_and_self_contained_html(report):
    html_text = (report / "report.html").read_text(encoding="utf-8")
    assert (report / "report.md").is_file()
    assert _external_references(html_text) == []
    assert "xlink:href=\"#" in html_text and "url(#" in html_text  # the references checked above exist


@pytest.mark.parametrize("snippet", [
    '<svg xmlns="http://www.w3.org/2000/svg"><use xlink:href="other.svg#a"/></svg>',
    '<svg xmlns="http://www.w3.org/2000/svg"><use xlink:href="#nowhere"/></svg>',
    '<p><a href="https://example.org/">x</a></p>',
    '<svg xmlns="http://www.w3.org/2000/svg"><image href="file:///tmp/x.png"/></svg>',
    '<p style="background: url(pic.png)">x</p>',
    '<svg xmlns="http://www.w3.org/2000/svg" id="a"><g id="a"></g></svg>',
    '<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0" style="fill: url(http://x/#p)"/></svg>',
])
def test_self_containment_check_catches_external_references(snippet):
    assert _external_references(f"<html><body>{snippet}</body></html>")


def _group(svg: ET.Element, gid: str) -> ET.Element | None:
    return svg.find(f".//{SVG}g[@id='{svg.get('id')}-{gid}']")


def _series(svg: ET.Element) -> list[ET.Element]:
    """A curve chart's series groups, in drawing order."""
    groups = []
    while (group := _group(svg, f"series-{len(groups)}")) is not None:
        groups.append(group)
    return groups


def _texts(svg: ET.Element) -> list[str]:
    return [t.text for t in svg.iter(f"{SVG}text")]


def _references_resolve_inside(svg: ET.Element) -> bool:
    ids = {e.get("id") for e in svg.iter()}
    refs = [e.get(XLINK_HREF) for e in svg.iter() if e.get(XLINK_HREF)]
    refs += [m for e in svg.iter() for v in e.attrib.values() for m in re.findall(r"url\((#[^)]*)\)", v)]
    return bool(refs) and all(ref.startswith("#") and ref[1:] in ids for ref in refs)


def test_svgs_parse_and_draw(run, report):
    html_text = (report / "report.html").read_text(encoding="utf-8")
    svgs = page_svgs(html_text)
    tsvs = list((run["train"] / "dvclive/plots/metrics").rglob("*.tsv"))
    series_per_metric = Counter(p.stem for p in tsvs)
    charts = {s.get("id"): s for s in svgs if s.get("id", "").startswith("curve-")}
    assert set(charts) == {f"curve-{metric}" for metric in series_per_metric} and len(svgs) == len(charts) + 1
    epochs = json.loads((run["train"] / "metrics.json").read_text())["epochs_run"]
    for metric, count in series_per_metric.items():
        chart = charts[f"curve-{metric}"]
        assert chart.find(f"{SVG}title").text == f"{metric} per epoch"
        lines = _series(chart)
        assert len(lines) == count, metric  # one line per dvclive file of this metric
        for line in lines:
            assert len(line.findall(f".//{SVG}use")) == epochs  # one dot per epoch
        assert _group(chart, "marker-0") is not None, "the selected epoch is marked"
        assert metric in _texts(chart) and "epoch (step)" in _texts(chart)  # text stays text
        assert _references_resolve_inside(chart)
    assert {"dev", "test"} <= set(_texts(charts["curve-weighted_f1"]))  # the legend names the series
    (confusion,) = [s for s in svgs if s.get("id") == "confusion-test"]
    assert len(_confusion_cells(svgs)) == len(LABELS) ** 2
    assert _references_resolve_inside(confusion)


def test_numbers_equal_the_source_files(run, report):
    html_text = (report / "report.html").read_text(encoding="utf-8")
    parser = parse_page(html_text)
    summary = json.loads((run["prepared"] / SUMMARY_FILE).read_text())
    evaluation = json.loads((run["eval"] / "metrics.json").read_text())
    trained = json.loads((run["train"] / "metrics.json").read_text())
    checkpoint = json.loads((run["train"] / "best/checkpoint.json").read_text())

    splits = page_table(parser, "split")
    for name, split in summary["splits"].items():
        assert splits[name]["utterances"] == str(split["utterances"])
        assert [splits[name][label] for label in LABELS] == [str(split["labels"][label]) for label in LABELS]
    assert splits["all"]["utterances"] == str(summary["counts"]["utterances_out"])
    counts = page_table(parser, "utterances")
    assert counts["utterances seen"]["count"] == str(summary["counts"]["utterances_seen"])
    assert counts["excluded"]["count"] == "1" and counts["flagged"]["count"] == "1"

    reasons = {(r["stage"], r["kind"], r["reason"]): r for r in _table_rows(parser, "stage")}
    face = json.loads((run["features"] / "face/report.json").read_text())
    face_row = reasons[("face store", "missing", "synthetic: no feature")]
    assert face["counts"]["missing"] > 0 and face_row["count"] == str(face["counts"]["missing"])
    assert face_row["examples (first 5)"].startswith(face["missing"][0]["utterance_id"])
    assert reasons[("prepare", "flagged", "unreadable_clip")]["count"] == "1"
    assert reasons[("prepare", "excluded", "label 'xxx' not in policy")]["examples (first 5)"] == "test_dia999_utt0"

    stores = page_table(parser, "modality")
    for modality, width in DIMS.items():
        store_report = json.loads((run["features"] / modality / "report.json").read_text())
        index = json.loads((run["features"] / modality / "index.json").read_text())
        row = stores[modality]
        assert row["feature dims"] == str(width) and row["shards"] == str(len(index["shards"]))
        assert row["coverage"].startswith(f"{store_report['counts']['out']} / {store_report['counts']['in']}")
        assert row["model sha256"] == store_report["store"]["model_sha256"][:12]

    scores = page_table(parser, "metric")
    assert scores["weighted F1"]["test"] == f"{evaluation['test']['weighted_f1']:.4f}"
    assert scores["macro F1"]["dev"] == f"{evaluation['dev']['macro_f1']:.4f}"
    per_class = page_table(parser, "class")
    for label in LABELS:
        assert per_class[label]["test F1"] == f"{evaluation['test']['per_class_f1'][label]:.4f}"
    epochs = page_table(parser, "which epoch")
    assert epochs["selected on dev (evaluated)"]["epoch"] == str(trained["best_epoch"])
    oracle = epochs["test oracle (NOT used for selection)"]
    assert oracle["epoch"] == str(trained["test_best_epoch_oracle"]["epoch"])
    assert oracle["test weighted F1"] == f"{trained['test_best_epoch_oracle']['weighted_f1']:.4f}"

    lineage = page_table(parser, "field")
    assert lineage["model"]["value"] == checkpoint["model_name"] == trained["model"] == "cmath"
    assert "<h1>Run report: meld, model cmath</h1>" in html_text
    assert lineage["git commit"]["value"].startswith(checkpoint["code"]["git_commit"])
    assert lineage["checkpoint epoch"]["value"] == str(checkpoint["epoch"]) == str(trained["best_epoch"])
    assert lineage["manifest sha256"]["value"] == checkpoint["data"]["manifest_sha256"]
    assert "Warning" not in html_text

    with open(run["eval"] / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    cells = _confusion_cells(page_svgs(html_text))
    assert sum(cells.values()) == len(predictions)
    assert cells == {**{(a, p): 0 for a in LABELS for p in LABELS},
                     **Counter((row["gold"], row["predicted"]) for row in predictions)}


def _table_rows(parser: PageParser, first_header: str) -> list[dict[str, str]]:
    for rows in parser.tables:
        if rows and rows[0] and rows[0][0] == first_header:
            return [dict(zip(rows[0], row)) for row in rows[1:]]
    raise AssertionError(f"no table starting with {first_header!r}")


def _confusion_cells(svgs: list[ET.Element]) -> dict[tuple[str, str], int]:
    """(actual, predicted) -> the count written in that cell, read from the heatmap's text."""
    (svg,) = [s for s in svgs if s.get("id") == "confusion-test"]
    prefix = "confusion-test-count-"
    cells = {}
    for group in svg.iter(f"{SVG}g"):
        if group.get("id", "").startswith(prefix):
            r, c = group.get("id").removeprefix(prefix).split("-")
            actual = _group(svg, f"actual-{r}").find(f"{SVG}text").text
            predicted = _group(svg, f"predicted-{c}").find(f"{SVG}text").text
            cells[(actual, predicted)] = int(group.find(f"{SVG}text").text)
    return cells


def test_markdown_has_the_same_tables_and_existing_svgs(run, report):
    md = (report / "report.md").read_text(encoding="utf-8")
    html_text = (report / "report.html").read_text(encoding="utf-8")
    parser = parse_page(html_text)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images and len(images) == len(page_svgs(html_text))
    inline = re.findall(r"<svg\b.*?</svg>", html_text, flags=re.S)
    for name in images:
        assert name.endswith(".svg") and "/" not in name
        root = ET.parse(report / name).getroot()
        assert root.tag == f"{SVG}svg" and root.get("id") == name.removesuffix(".svg")
        assert (report / name).read_text(encoding="utf-8").strip() in inline  # the very figure on the page
    for rows in parser.tables:
        for row in rows:
            assert "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" in md, row
    evaluation = json.loads((run["eval"] / "metrics.json").read_text())
    assert f"| weighted F1 | {evaluation['dev']['weighted_f1']:.4f} | {evaluation['test']['weighted_f1']:.4f} |" in md


def test_missing_eval_folder_is_a_one_line_error(run, tmp_path, capsys):
    out = tmp_path / "report"
    missing = tmp_path / "eval-never-run"
    code = main(["report", "--corpus", "meld", "--prepared", str(run["prepared"]), "--features", str(run["features"]),
                 "--train", str(run["train"]), "--eval", str(missing), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{missing / 'metrics.json'} not found" in err and "dvc repro evaluate@meld" in err
    assert not out.exists()


def test_missing_store_report_names_the_extract_stage(run, tmp_path):
    from pipeline.core.errors import PipelineError

    with pytest.raises(PipelineError, match=r"text/report.json not found: run `dvc repro extract_meld@text`"):
        write_run_report("meld", run["prepared"], tmp_path / "features", run["train"], run["eval"], tmp_path / "out")


def test_joined_store_reasons_are_counted_one_by_one():
    missing = [{"utterance_id": "a", "reason": "no_video; no_face"}, {"utterance_id": "b", "reason": "no_face"}]
    store = {"missing": missing, "flagged": []}
    run = RunInputs("meld", {}, {"face": StoreInputs(store, {})}, {}, {}, {}, {}, [])
    rows = {(r[0], r[2]): r for r in reason_rows(run)}
    assert rows[("face store", "no_face")][3:] == ["2", "a, b"]
    assert rows[("face store", "no_video")][3:] == ["1", "a"]


def test_example_ids_are_capped():
    store = {"missing": [{"utterance_id": f"u{i}", "reason": "no_face"} for i in range(12)], "flagged": []}
    run = RunInputs("meld", {}, {"face": StoreInputs(store, {})}, {}, {}, {}, {}, [])
    (row,) = reason_rows(run)
    assert row[3] == "12" and row[4] == "u0, u1, u2, u3, u4 … and 7 more"


def test_curve_chart_draws_one_line_per_series_and_the_markers():
    series = {"dev": [(1.0, 0.2), (2.0, 0.4), (3.0, 0.3)], "test": [(1.0, 0.1), (2.0, 0.2), (3.0, 0.5)]}
    markers = [Marker(2.0, "selected", "#000000", (6, 3)), Marker(3.0, "oracle", "#888888", (2, 3))]
    svg = ET.fromstring(curve_chart_svg("curve-f1", "f1", series, markers))
    assert svg.get("id") == "curve-f1" and svg.find(f"{SVG}title").text == "f1 per epoch"
    lines = _series(svg)
    assert len(lines) == 2 and all(len(line.findall(f".//{SVG}use")) == 3 for line in lines)
    assert _group(svg, "marker-0") is not None and _group(svg, "marker-1") is not None
    assert {"f1", "dev", "test", "selected", "oracle"} <= set(_texts(svg))
    assert _references_resolve_inside(svg)


def test_charts_survive_degenerate_data():
    """One epoch, a NaN, and labels that need escaping (or look like TeX) still give valid, drawn SVG."""
    text = curve_chart_svg("c", "a<b & $c$", {"dev": [(1.0, 0.5)], "test": [(1.0, 0.5), (2.0, float("nan"))]})
    svg = ET.fromstring(text)
    assert [len(line.findall(f".//{SVG}use")) for line in _series(svg)] == [1, 1]  # the NaN is left out
    assert "a<b & $c$" in _texts(svg) and "a&lt;b &amp; $c$" in text  # escaped, and not parsed as math
    svg = ET.fromstring(confusion_chart_svg("confusion-test", ["x<y", "z"], [[0, 0], [0, 0]]))
    assert _confusion_cells([svg]) == {(a, p): 0 for a in ("x<y", "z") for p in ("x<y", "z")}
    assert ET.fromstring(confusion_chart_svg("empty", [], [])).get("id") == "empty"


def test_confusion_chart_writes_each_count_in_its_cell():
    labels = ["a", "b", "c"]
    matrix = [[5, 1, 0], [2, 7, 0], [0, 3, 4]]
    svg = ET.fromstring(confusion_chart_svg("confusion-test", labels, matrix))
    cells = _confusion_cells([svg])
    assert cells == {(a, p): matrix[r][c] for r, a in enumerate(labels) for c, p in enumerate(labels)}
    assert "predicted" in _texts(svg) and "actual" in _texts(svg)


def test_rerun_gives_the_same_bytes(run, report, tmp_path):
    """Same inputs, same files: no date, no random ids, and no dependence on the caller's matplotlib settings."""
    args = (run["prepared"], run["features"], run["train"], run["eval"])
    write_run_report("meld", *args, tmp_path / "again")
    with matplotlib.rc_context({"svg.hashsalt": None, "svg.fonttype": "path", "font.size": 20,
                                "lines.linewidth": 5, "axes.prop_cycle": matplotlib.cycler(color=["k"])}):
        write_run_report("meld", *args, tmp_path / "restyled")
    files = sorted(p.name for p in report.iterdir())
    assert "report.html" in files and "report.md" in files and "confusion-test.svg" in files
    for again in (tmp_path / "again", tmp_path / "restyled"):
        assert sorted(p.name for p in again.iterdir()) == files
        for name in files:
            assert (again / name).read_bytes() == (report / name).read_bytes(), name
    page = (report / "report.html").read_text(encoding="utf-8")
    assert "<metadata" not in page and matplotlib.__version__ not in page  # no date, no generator stamp


def test_outputs_of_different_runs_are_called_out(run, tmp_path):
    """An evaluation of another epoch than the selected one is shown as a warning, not silently mixed."""
    import shutil

    evaluation = tmp_path / "eval"
    shutil.copytree(run["eval"], evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["checkpoint"]["epoch"] = 99
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "out"
    html_path, _ = write_run_report("meld", run["prepared"], run["features"], run["train"], evaluation, out)
    assert "Warning: the evaluation scored epoch 99, training selected epoch" in html_path.read_text(encoding="utf-8")


def test_the_page_names_the_model_and_calls_out_an_evaluation_of_another(run, tmp_path):
    """The model comes from the checkpoint (one from before checkpoints named it is CMATH's); an evaluation
    of another model's checkpoint is a warning on the page."""
    import shutil

    trained, evaluation = tmp_path / "train", tmp_path / "eval"
    shutil.copytree(run["train"], trained)
    shutil.copytree(run["eval"], evaluation)
    checkpoint_json = trained / "best/checkpoint.json"
    checkpoint_json.write_text(json.dumps({**json.loads(checkpoint_json.read_text()), "model_name": "bigru"}))
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["checkpoint"]["model"] = "late_fusion"
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    html_path, md_path = write_run_report("meld", run["prepared"], run["features"], trained, evaluation, tmp_path / "a")
    page = html_path.read_text(encoding="utf-8")
    assert page_table(parse_page(page), "field")["model"]["value"] == "bigru"
    assert "<h1>Run report: meld, model bigru</h1>" in page
    assert md_path.read_text(encoding="utf-8").startswith("# Run report: meld, model bigru\n")
    assert "Warning: the evaluation scored a late_fusion checkpoint, the training folder holds bigru" in page

    legacy = {k: v for k, v in json.loads(checkpoint_json.read_text()).items() if k != "model_name"}
    checkpoint_json.write_text(json.dumps(legacy))
    train_metrics = json.loads((trained / "metrics.json").read_text())
    (trained / "metrics.json").write_text(json.dumps({k: v for k, v in train_metrics.items() if k != "model"}))
    html_path, _ = write_run_report("meld", run["prepared"], run["features"], trained, run["eval"], tmp_path / "b")
    page = html_path.read_text(encoding="utf-8")
    assert page_table(parse_page(page), "field")["model"]["value"] == "cmath" and "Warning" not in page
