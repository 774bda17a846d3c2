"""Shared test helpers: where the reference data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a message saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (it lives beside the checkout in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> tuple[Path, dict]:
    """The default demo corpus, generated once per test session: (root folder, truth record)."""
    from pipeline.demo import DemoConfig, generate_demo_corpus

    root = tmp_path_factory.mktemp("demo") / "corpus"
    return root, generate_demo_corpus(root, DemoConfig())
