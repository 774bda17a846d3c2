"""The DVC code-deps check: each stage's code deps are exactly the project modules its command loads.

`mer` writes one JSON line per command to `$MER_MODULE_LOG` (`pipeline.cli`): its argv and the
project source files in `sys.modules` when it ended. Run `dvc repro` with that variable set, then
match each `dvc.yaml` stage (foreach/matrix expanded by DVC itself) with the command it ran:
`missing_code_deps` lists the loaded files that no dep covers (a folder dep covers its files), and
`unused_code_deps` the code deps that cover a module the command never loads (which would mark the
stage stale for an edit that cannot change its result).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

CODE_ROOTS = ("pipeline", "extractors", "model")  # the project's packages: deps under them are code deps


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "extract_meld@text"
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
            # as `dvc status --json` names it: bare in the project's dvc.yaml, "<its dvc.yaml>:<name>" in
            # another one (e.g. protocols/iemocap-loso/dvc.yaml:train@1)
            dvcfile = Path(stage.dvcfile.path).resolve().relative_to(project.resolve()).as_posix()
            name = stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"
            stages.append(Stage(name, tuple(words[1:]) if words[:1] == ["mer"] else tuple(words), deps))
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


def unused_code_deps(stages: list[Stage], loaded: dict[tuple[str, ...], set[str]], project: Path
                     ) -> dict[str, list[str]]:
    """Stage name -> its code deps that cover a Python module its command did not load (data files in a
    folder dep, such as templates, are not modules and do not count)."""
    problems = {}
    for stage in stages:
        modules = loaded.get(stage.argv, set())
        unused = []
        for dep in stage.deps:
            if dep.split("/")[0] not in CODE_ROOTS:
                continue
            path = project / dep
            files = [dep] if path.is_file() else [p.relative_to(project).as_posix() for p in sorted(path.rglob("*.py"))]
            never = [f for f in files if f.endswith(".py") and f not in modules]
            if never:
                unused.append(f"{dep} ({', '.join(never)})" if path.is_dir() else dep)
        if unused:
            problems[stage.name] = unused
    return problems


def suggested_code_deps(modules: set[str], project: Path) -> list[str]:
    """The shortest exact dep list for `modules`: the widest folder all of whose modules are loaded
    (sub-folders included), else the file itself."""

    def fully_loaded(folder: Path) -> bool:
        files = {p.relative_to(project).as_posix() for p in (project / folder).rglob("*.py")}
        return bool(files) and files <= modules

    deps: set[str] = set()
    for module in sorted(modules):
        best, folder = None, Path(module).parent
        while folder != Path(".") and fully_loaded(folder):
            best, folder = folder, folder.parent
        deps.add(best.as_posix() if best is not None else module)
    # a folder dep makes the deps inside it redundant
    return sorted(d for d in deps if not any(d != o and d.startswith(o + "/") for o in deps))
