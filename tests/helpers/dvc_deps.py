"""The DVC code-deps check: every project module a stage's command loaded is covered by its deps.

`mer` writes one JSON line per command to `$MER_MODULE_LOG` (`pipeline.cli`): its argv and the
project source files in `sys.modules` when it ended. Run `dvc repro` with that variable set, then
`missing_code_deps` matches each `dvc.yaml` stage (foreach/matrix expanded by DVC itself) with the
command it ran and lists the loaded files that no dep covers (a folder dep covers its files).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "extract@meld-text"
    argv: tuple[str, ...]  # the command's arguments after `mer`
    deps: tuple[str, ...]  # project-relative paths


def dvc_stages(project: Path) -> list[Stage]:
    """The project's `dvc.yaml` stages as DVC expands them (foreach, matrix, ${} interpolation)."""
    from dvc.repo import Repo

    stages = []
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            words = shlex.split(stage.cmd if isinstance(stage.cmd, str) else " ".join(stage.cmd))
            deps = tuple(str(Path(d.fs_path).resolve().relative_to(project.resolve())) for d in stage.deps
                         if Path(d.fs_path).resolve().is_relative_to(project.resolve()))
            stages.append(Stage(stage.addressing, tuple(words[1:]) if words[:1] == ["mer"] else tuple(words), deps))
    return stages


def read_module_log(path: Path) -> dict[tuple[str, ...], set[str]]:
    """argv -> the project files that command loaded (the union, if it ran more than once)."""
    loaded: dict[tuple[str, ...], set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        loaded.setdefault(tuple(entry["argv"]), set()).update(entry["modules"])
    return loaded


def covered(module: str, deps: tuple[str, ...]) -> bool:
    return any(module == dep or module.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing_code_deps(stages: list[Stage], loaded: dict[tuple[str, ...], set[str]]) -> dict[str, list[str]]:
    """Stage name -> the loaded project files its deps do not cover ("<never ran>" if no command matched)."""
    problems = {}
    for stage in stages:
        if stage.argv not in loaded:
            problems[stage.name] = ["<never ran: no module log entry for its command>"]
            continue
        missing = sorted(m for m in loaded[stage.argv] if not covered(m, stage.deps))
        if missing:
            problems[stage.name] = missing
    return problems


def stages_using(module: str, stages: list[Stage], loaded: dict[tuple[str, ...], set[str]]) -> set[str]:
    """The stages whose command loaded `module`."""
    return {s.name for s in stages if module in loaded.get(s.argv, set())}
