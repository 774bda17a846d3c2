"""`params.yaml` -> typed dataclasses, validated at the edge with a message naming the bad key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.core.errors import PipelineError

T = TypeVar("T")


def load_params(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level")
    return data


def section_to_dataclass(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    """Build `cls` from a params section; unknown keys and wrong values are errors naming `where`."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise PipelineError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: {exc}") from None


def load_section(path: Path, name: str, cls: type[T]) -> T:
    """The dataclass for section `name` of a params file (dotted names reach nested sections)."""
    node: Any = load_params(path)
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PipelineError(f"{path}: section {name!r} not found")
        node = node[part]
    if not isinstance(node, dict):
        raise PipelineError(f"{path}: section {name!r} must be a mapping")
    return section_to_dataclass(cls, node, f"{path}:{name}")
