"""Raw corpus readers, one module per corpus.

A reader is a plain function of the raw tree: `read(root, label_policy) -> CorpusReadResult`.
It never writes; `pipeline.stages.prepare` turns its result into the manifest and the summary.
Adding a corpus is adding a module here that calls `register_corpus`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.formats.manifest import CorpusReadResult

ReadFn = Callable[[Path, str], CorpusReadResult]


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    read: ReadFn
    label_policies: dict[str, list[str]]  # policy name -> label names in index order
    default_policy: str
    description: str


_REGISTRY: dict[str, CorpusSpec] = {}


def register_corpus(
    name: str, label_policies: dict[str, list[str]], default_policy: str, description: str
) -> Callable[[ReadFn], ReadFn]:
    """Decorator registering a reader function under `name`."""
    if default_policy not in label_policies:
        raise ValueError(f"default policy {default_policy!r} is not one of {sorted(label_policies)}")

    def decorate(read: ReadFn) -> ReadFn:
        _REGISTRY[name] = CorpusSpec(name, read, label_policies, default_policy, description)
        return read

    return decorate


def corpus_names() -> list[str]:
    """The corpora this package has a reader for, without importing any reader (so a stage loads, and
    depends on, only the reader it runs)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_corpus(name: str) -> CorpusSpec:
    """The reader of corpus `name`, importing `pipeline.corpora.<name>` on demand."""
    if name not in corpus_names():
        raise PipelineError(f"unknown corpus {name!r}; available: {', '.join(corpus_names())}")
    if name not in _REGISTRY:
        importlib.import_module(f"{__name__}.{name}")
    return _REGISTRY[name]
