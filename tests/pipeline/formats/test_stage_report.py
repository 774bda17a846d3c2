"""Stage reports (pipeline/stage_report.py): every stage accounts for every utterance it was given."""

from __future__ import annotations

import json

import pytest

from pipeline.core.errors import PipelineError
from pipeline.formats.manifest import read_manifest
from pipeline.formats.stage_report import REPORT_FILE, count_reasons, describe_counts, read_stage_report, stage_counts


def test_an_utterance_without_a_reason_cannot_be_reported():
    with pytest.raises(RuntimeError, match="1 unaccounted for"):
        stage_counts("extract", "meld", 5, 3, dropped=[("a", "no_face")], flagged=[])


def test_joined_reasons_are_counted_once_per_part():
    report = stage_counts(
        "extract", "meld", 4, 3, dropped=[("a", "missing_clip")],
        flagged=[("b", "no_face; low_confidence"), ("c", "no_face")],
    )
    assert report["counts"] == {"in": 4, "out": 3, "dropped": 1, "flagged": 2}
    assert report["flagged_by_reason"] == {"low_confidence": 1, "no_face": 2}
    assert count_reasons(["x; y", "y"]) == {"x": 1, "y": 2}
    assert describe_counts(report) == (
        "extract meld: 4 in, 3 out, 1 dropped (missing_clip 1), 2 flagged (low_confidence 1, no_face 2)"
    )


@pytest.mark.parametrize("corpus", ["meld", "iemocap"])
def test_prepare_reports_every_record_it_saw(prepared_demo, corpus):
    folder = prepared_demo[corpus]
    report = read_stage_report(folder)
    summary = json.loads((folder / "summary.json").read_text())
    rows = read_manifest(folder)
    assert report["stage"] == "prepare" and report["corpus"] == corpus
    assert report["counts"]["in"] == summary["counts"]["utterances_seen"]
    assert report["counts"]["out"] == len(rows)
    assert report["counts"]["dropped"] == len(summary["excluded"])
    assert report["counts"]["flagged"] == sum(1 for r in rows if r["flags"])
    assert report["dropped_by_reason"] == summary["exclusion_counts"]
    assert report["flagged_by_reason"] == summary["flag_counts"]


def test_a_report_that_does_not_add_up_or_lacks_keys_is_refused(tmp_path):
    with pytest.raises(PipelineError, match="stage report not found"):
        read_stage_report(tmp_path)
    report = stage_counts("train", "meld", 3, 3, dropped=[], flagged=[])
    report["counts"]["out"] = 2
    (tmp_path / REPORT_FILE).write_text(json.dumps(report))
    with pytest.raises(PipelineError, match="in 3 != out 2 \\+ dropped 0"):
        read_stage_report(tmp_path)
    (tmp_path / REPORT_FILE).write_text(json.dumps({"counts": {}}))
    with pytest.raises(PipelineError, match="lacks stage, corpus"):
        read_stage_report(tmp_path)
