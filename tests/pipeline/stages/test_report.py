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

import pytest
import torch

from pipeline.stages.train import TrainConfig, train
from pipeline.cli import main
from pipeline.formats.manifest import SUMMARY_FILE, CorpusReadResult, Exclusion, Utterance, build_summary, read_manifest
from pipeline.stages.report import (
    RunInputs,
    StoreInputs,
    confusion_svg,
    line_chart_svg,
    nice_ticks,
    reason_rows,
    write_run_report,
)
from tests.helpers.report_page import page_svgs, page_table, parse_page
from tests.helpers.train_corpus import DIMS, LABELS, make_corpus

SVG = "{http://www.w3.org/2000/svg}"
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
    summary = build_summary(result, prepared)
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


def test_report_files_and_self_contained_html(report):
    html_text = (report / "report.html").read_text(encoding="utf-8")
    assert (report / "report.md").is_file()
    parser = parse_page(html_text)
    tags = {tag for tag, _, _ in parser.attrs} | set(re.findall(r"<([a-z]+)", html_text))
    assert not tags & {"img", "script", "link", "iframe", "object", "embed"}
    for tag, name, value in parser.attrs:
        assert name not in ("src", "href", "xlink:href"), (tag, name, value)
        if value and ("http:" in value or "https:" in value or "file:" in value):
            assert (tag, name) == ("svg", "xmlns"), (tag, name, value)  # a namespace name, not a resource
    assert "url(" not in html_text and "@import" not in html_text


def test_svgs_parse_and_draw(run, report):
    html_text = (report / "report.html").read_text(encoding="utf-8")
    svgs = page_svgs(html_text)
    curves = {p.stem for p in (run["train"] / "dvclive/plots/metrics").rglob("*.tsv")}
    charts = [s for s in svgs if s.findall(f".//{SVG}polyline")]
    assert len(charts) == len(curves) and len(svgs) == len(curves) + 1
    epochs = json.loads((run["train"] / "metrics.json").read_text())["epochs_run"]
    for chart in charts:
        for line in chart.findall(f".//{SVG}polyline"):
            assert len(line.get("points").split()) == epochs
        assert chart.findall(f".//{SVG}line[@class='marker']"), "the selected epoch is marked"
    confusion = [s for s in svgs if s.findall(f".//{SVG}rect[@class='cell']")]
    assert len(confusion) == 1
    assert len(confusion[0].findall(f".//{SVG}rect[@class='cell']")) == len(LABELS) ** 2


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
    (svg,) = [s for s in svgs if s.findall(f".//{SVG}rect[@class='cell']")]
    cells = {}
    rects = svg.findall(f".//{SVG}rect[@class='cell']")
    counts = svg.findall(f".//{SVG}text[@class='count']")
    for rect, count in zip(rects, counts, strict=True):
        match = re.fullmatch(r"actual (.+), predicted (.+): (\d+)", rect.find(f"{SVG}title").text)
        assert match and match.group(3) == count.text
        cells[(match.group(1), match.group(2))] = int(count.text)
    return cells


def test_markdown_has_the_same_tables_and_existing_svgs(run, report):
    md = (report / "report.md").read_text(encoding="utf-8")
    html_text = (report / "report.html").read_text(encoding="utf-8")
    parser = parse_page(html_text)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images and len(images) == len(page_svgs(html_text))
    for name in images:
        assert name.endswith(".svg") and "/" not in name
        root = ET.parse(report / name).getroot()
        assert root.tag == f"{SVG}svg" and (root.findall(f".//{SVG}polyline") or root.findall(f".//{SVG}rect"))
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

    with pytest.raises(PipelineError, match=r"text/report.json not found: run `dvc repro extract@meld-text`"):
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


def test_charts_survive_degenerate_data():
    """One epoch, a flat curve, a NaN, and a label that needs escaping still give valid, drawn SVG."""
    svg = line_chart_svg("a<b & c", {"dev": [(1.0, 0.5)], "test": [(1.0, 0.5), (2.0, float("nan"))]})
    root = ET.fromstring(svg)
    assert root.findall(f".//{SVG}circle") and root.findall(f".//{SVG}polyline")
    assert "a&lt;b &amp; c" in svg
    root = ET.fromstring(confusion_svg(["x<y", "z"], [[0, 0], [0, 0]]))
    assert len(root.findall(f".//{SVG}rect[@class='cell']")) == 4
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3.0, 3.0)[0] <= 3.0 <= nice_ticks(3.0, 3.0)[-1]


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
