"""Helpers shared by the tests (the one place for them: test files never import each other).

`PROJECT_ROOT`, `shared_path`, `text_row` (a manifest row for the text extractors) here; the IEMOCAP fixture tree (`iemocap_tree`), synthetic training
corpora (`train_corpus`) and the fault suite's raw-file and accounting helpers (`faults`) beside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a message saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (it lives beside the checkout in ../shared/data)")
    return path


def text_row(uid: str, turn: int, text: str, speaker: str = "Ross", dialogue: str = "d1") -> dict:
    """The manifest fields a text extractor reads, for one utterance (empty text: has_text False)."""
    return {"utterance_id": uid, "dialogue_id": dialogue, "turn_index": turn, "speaker": speaker, "text": text,
            "has_text": bool(text)}
