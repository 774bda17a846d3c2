"""Session fixtures shared by every test folder: the demo corpus, its manifests, the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> tuple[Path, dict]:
    """The default demo corpus, generated once per test session: (root folder, truth record)."""
    from pipeline.demo.corpus import DemoConfig, generate_demo_corpus

    root = tmp_path_factory.mktemp("demo") / "corpus"
    return root, generate_demo_corpus(root, DemoConfig())


@pytest.fixture(scope="session")
def prepared_demo(demo_corpus, tmp_path_factory) -> dict[str, Path]:
    """Manifests of the demo corpus, prepared once per session: {corpus: prepared folder}."""
    from pipeline.stages.prepare import prepare_corpus

    root, _ = demo_corpus
    out = tmp_path_factory.mktemp("prepared")
    return {
        "meld": _prepared(prepare_corpus, "meld", root / "MELD.Raw", out / "meld"),
        "iemocap": _prepared(prepare_corpus, "iemocap", root / "IEMOCAP_full_release", out / "iemocap"),
    }


def _prepared(prepare_corpus, corpus: str, root: Path, out: Path) -> Path:
    prepare_corpus(corpus, root, out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The offline stand-in models, built once per session: {"text", "audio", "face"} -> path."""
    from pipeline.demo.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tiny models, restored after it. On a busy 2-core
    machine two spinning threads made tiny models several (up to 20) times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
