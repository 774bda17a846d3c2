"""Fault injection over the demo corpus: copy it, break one thing, run the real stages, check the outcome.

Every test copies (part of) the session's demo corpus into its own tmp_path (the session copy is never
touched), injects one fault, runs `prepare_corpus` / `extract_features` (or `mer` through
`pipeline.cli.main` when the one-line error is what is tested) and checks two things:

1. the outcome the fault must have (a flag, a missing reason, or a one-line error naming the file);
2. `assert_accounted`: no utterance disappeared. Every utterance record of the raw input (a MELD CSV
   row, an IEMOCAP EmoEvaluation summary line, read here independently of the readers) is either in
   the manifest or in summary.json's `excluded` list with a reason; every manifest utterance is
   either stored in the feature store (index.json "utterances") or in report.json "missing" with a
   reason; and the counts say the same (seen = out + excluded, in = out + missing).

Cost control (2 shared CPU cores): media faults run on one dialogue of MELD's dev split, and IEMOCAP
faults on one dialogue per session (the reader needs all five sessions); the other CSV rows and
EmoEvaluation files are removed from the copy, so they are not raw input of the test. Extraction
uses the tiny offline models and decodes in the main process (`num_workers` is a runtime setting
that never changes a feature).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.corpora import iemocap, meld
from tests.helpers.faults import IEMOCAP_SUBSET, keep_one_meld_dialogue


# --- copies of the demo corpus ---------------------------------------------------------------------


@pytest.fixture
def meld_raw_full(demo_corpus, tmp_path: Path) -> Path:
    """A copy of the whole demo MELD.Raw (for faults that only need `prepare` or text extraction)."""
    root, _ = demo_corpus
    raw = tmp_path / meld.RELEASE_DIR
    shutil.copytree(root / meld.RELEASE_DIR, raw)
    return raw


@pytest.fixture
def meld_raw(meld_raw_full: Path) -> Path:
    """A copy of the demo's MELD.Raw, trimmed to dev dialogue 0 (6 utterances, one clip each) and one row of
    train and of test (a split without rows is refused)."""
    keep_one_meld_dialogue(meld_raw_full)
    return meld_raw_full


@pytest.fixture
def iemocap_raw(demo_corpus, tmp_path: Path) -> Path:
    """A copy of the demo's IEMOCAP_full_release with one dialogue per session left (~55 turns)."""
    root, _ = demo_corpus
    raw = tmp_path / iemocap.RELEASE_DIR
    shutil.copytree(root / iemocap.RELEASE_DIR, raw)
    for label_file in raw.glob(f"Session*/{iemocap.LABEL_DIR}/*.txt"):
        if label_file.stem not in IEMOCAP_SUBSET:
            label_file.unlink()
    return raw
