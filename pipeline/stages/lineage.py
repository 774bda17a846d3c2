"""`mer lineage`: the chain of files behind a result, and whether every link of it still holds.

    metrics <- checkpoint <- feature store (one per modality) <- manifest <- raw files

Each artifact already records what it was made from: evaluation metrics name the checkpoint and
its weights hash; a checkpoint records its config, seed, git commit, the manifest hash and each
store's index hash; a store records its extractor, model weights hash, params and manifest hash
(and, for a fitted extractor such as tfidf, the hash of the state it learned from the train split);
a manifest records its corpus, label policy, split rule and a fingerprint of every raw file each
utterance was read from. Tracing follows those records and checks each one against the files on
disk now. A record that no longer matches (a store rebuilt from another manifest, weights changed
since extraction, a swapped shard, an edited raw file) is a *broken* link; things worth knowing
that do not invalidate the result (code edited since training, weights that cannot be checked
offline) are *warnings*.

Inside a DVC project, every link is also matched with the `dvc.lock` stage that produced it, and
the parameters each artifact recorded are compared with the ones `dvc.lock` holds for that stage,
so the audit agrees with DVC's own record (`dvc status`, `dvc params diff`, `dvc metrics diff`).
"""

from __future__ import annotations

import configparser
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.atomic import atomic_write_bytes
from pipeline.core.errors import PipelineError
from pipeline.core.fingerprint import fingerprint_problem, sha256_file
from pipeline.core.outputs import check_output_file
from pipeline.formats.feature_store import FITTED_FILE, INDEX_FILE
from pipeline.formats.manifest import MANIFEST_FILE, SUMMARY_FILE, manifest_metadata, raw_root_of, read_manifest
from pipeline.formats.stage_report import REPORT_FILE, describe_counts, read_stage_report
from pipeline.formats.run_files import BEST_DIR, CHECKPOINT_JSON, STATS_FILE, WEIGHTS_FILE

OK, WARNING, BROKEN = "ok", "warning", "broken"
KINDS = ("metrics", "checkpoint", "feature_store", "manifest", "raw_files")  # the chain's order, result first
RAW_EXAMPLES = 5  # mismatching raw files named in a check; the JSON lists them all


@dataclass
class Check:
    status: str  # ok | warning | broken
    what: str


@dataclass
class Link:
    kind: str  # metrics | checkpoint | feature_store | manifest | raw_files
    path: str  # relative to the project when inside it
    stage: str | None = None  # the dvc.lock stage whose output holds it
    facts: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # paths of the links it was made from

    def check(self, ok: bool, good: str, bad: str, severity: str = BROKEN) -> bool:
        self.checks.append(Check(OK if ok else severity, good if ok else bad))
        return ok


@dataclass
class Lineage:
    roots: list[str]
    links: dict[str, Link]

    def problems(self, status: str) -> list[str]:
        return [f"{link.path}: {c.what}" for link in self.links.values() for c in link.checks if c.status == status]

    @property
    def broken(self) -> list[str]:
        return self.problems(BROKEN)

    def to_dict(self) -> dict[str, Any]:
        return {
            "roots": self.roots,
            "links": [asdict(link) for link in self.links.values()],
            "broken": self.broken,
            "warnings": self.problems(WARNING),
        }


def trace(paths: list[Path] | None = None, project: Path = Path("."), rehash: bool = False) -> Lineage:
    """Trace `paths` (default: the metrics files declared in the project's dvc.yaml) back to raw files.

    Raw media whose size and mtime are unchanged count as unchanged unless `rehash`: then every raw
    file is reread and compared with its recorded content hash."""
    tracer = _Tracer(Path(project), rehash)
    roots = list(paths) if paths else tracer.declared_metrics()
    keys = [tracer.visit(Path(p)) for p in roots]
    return Lineage(roots=keys, links=tracer.links)


def check_json_target(path: Path, inputs: list[Path]) -> Path:
    """Refuse a `--json FILE` that is or lies inside one of the traced paths, is an existing folder,
    an existing file that is not a lineage JSON, or cannot be written (`pipeline.core.outputs`)."""
    return check_output_file(path, [("PATH", p) for p in inputs], option="--json", replaceable=_is_lineage_json,
                             what="a lineage file written by `mer lineage --json`")


def _is_lineage_json(path: Path) -> bool:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"roots", "links", "broken"} <= set(record)


def write_json(lineage: Lineage, path: Path, project: Path = Path(".")) -> None:
    """Write the chain as JSON to `path`, which must not be or lie inside any file the chain was traced from."""
    root = Path(project).resolve()
    traced = [Path(link.path) if Path(link.path).is_absolute() else root / link.path for link in lineage.links.values()]
    check_json_target(Path(path), traced)
    atomic_write_bytes(Path(path), (json.dumps(lineage.to_dict(), indent=2) + "\n").encode())


def describe(lineage: Lineage) -> str:
    """The chain as text: each link once, its facts, then one line per check."""
    lines: list[str] = []
    for link in sorted(lineage.links.values(), key=lambda link: KINDS.index(link.kind)):
        stage = f"  [{link.stage}]" if link.stage else ""
        made_from = f"  <- {', '.join(link.inputs)}" if link.inputs else ""
        lines.append(f"{link.kind} {link.path}{stage}{made_from}")
        for key, value in link.facts.items():
            lines.append(f"    {key}: {_fact(value)}")
        for check in link.checks:
            lines.append(f"    {check.status.upper():8} {check.what}")
    broken, warnings = lineage.broken, lineage.problems(WARNING)
    checks = sum(len(link.checks) for link in lineage.links.values())
    lines.append(
        f"lineage: {len(lineage.links)} links, {checks} checks, {len(broken)} broken, {len(warnings)} warnings"
    )
    lines += [f"BROKEN {b}" for b in broken]
    return "\n".join(lines)


def _fact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fact(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _short(digest: str | None) -> str:
    return (digest or "?")[:12]


class DvcLock:
    """The stages of a project's dvc.lock: which stage wrote a path, with what params and deps."""

    def __init__(self, project: Path) -> None:
        self.project = project
        lock = project / "dvc.lock"
        self.stages: dict[str, Any] = {}
        if lock.is_file():
            self.stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})

    def stage_of(self, rel: str) -> str | None:
        for name, entry in self.stages.items():
            for out in entry.get("outs", []):
                if rel == out["path"] or rel.startswith(out["path"].rstrip("/") + "/"):
                    return name
        return None

    def params(self, stage: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for values in (self.stages.get(stage, {}).get("params") or {}).values():
            merged.update(values)
        return merged

    def cmd_option(self, stage: str, option: str) -> str | None:
        match = re.search(rf"{option}\s+(\S+)", self.stages.get(stage, {}).get("cmd", ""))
        return match.group(1) if match else None


def remote_configured(project: Path) -> bool:
    """Whether the project's DVC config (or its local override) defines a remote."""
    parser = configparser.ConfigParser()
    parser.read([project / ".dvc" / "config", project / ".dvc" / "config.local"])
    return any(section.strip("'").startswith("remote ") for section in parser.sections())


class _Tracer:
    def __init__(self, project: Path, rehash: bool = False) -> None:
        self.project = project.resolve()
        self.rehash = rehash
        self.lock = DvcLock(self.project)
        self.links: dict[str, Link] = {}

    # ---- paths ----
    def resolve(self, recorded: str | Path) -> Path:
        path = Path(recorded).expanduser()
        return path if path.is_absolute() else self.project / path

    def rel(self, path: Path) -> str:
        path = Path(path).resolve()
        try:
            return path.relative_to(self.project).as_posix()
        except ValueError:
            return str(path)

    def declared_metrics(self) -> list[Path]:
        dvc_yaml = self.project / "dvc.yaml"
        if not dvc_yaml.is_file():
            raise PipelineError(f"{dvc_yaml}: not found; give the metrics file, checkpoint, store or manifest to trace")
        declared = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("metrics", [])
        paths = [self.resolve(p) for p in declared]
        present = [p for p in paths if p.exists()]
        if not present:
            raise PipelineError(f"none of the metrics files declared in {dvc_yaml} exists; {self.absent_hint()}")
        return present

    def absent_hint(self, stage: str | None = None) -> str:
        target = f" {stage}" if stage else ""
        if not self.lock.stages:
            return "run `dvc repro` first"
        hint = f"run `dvc repro{target}`, or `dvc pull{target}` if it was pushed to a DVC remote"
        if not remote_configured(self.project):
            hint += " (no DVC remote is configured here: add one with `dvc remote add -d <name> <url>`)"
        return hint

    def new_link(self, kind: str, path: Path) -> Link:
        rel = self.rel(path)
        link = Link(kind=kind, path=rel, stage=self.lock.stage_of(rel))
        self.links[rel] = link
        return link

    def present(self, parent: Link, path: Path, what: str) -> bool:
        """True if `path` exists; otherwise a broken check on `parent` that says how to get it back."""
        if path.exists():
            return True
        rel = self.rel(path)
        parent.check(False, "", f"{what} {rel} is not in the workspace: {self.absent_hint(self.lock.stage_of(rel))}")
        return False

    # ---- dispatch ----
    def visit(self, path: Path) -> str:
        path = self.resolve(path)
        if not path.exists():
            raise PipelineError(f"{path}: does not exist")
        if path.is_dir() and (path / MANIFEST_FILE).is_file():
            path = path / MANIFEST_FILE
        rel = self.rel(path)
        if rel in self.links:
            return rel
        if path.is_file() and path.name == MANIFEST_FILE:
            self.manifest(path)
        elif path.is_file() and path.suffix == ".json":
            self.metrics(path)
        elif path.is_dir() and (path / CHECKPOINT_JSON).is_file():
            self.checkpoint(path)
        elif path.is_dir() and ((path / INDEX_FILE).is_file() or (path / REPORT_FILE).is_file()):
            self.store(path)
        else:
            raise PipelineError(f"{path}: not a metrics file, checkpoint folder, feature store or manifest")
        return rel

    # ---- links ----
    def metrics(self, path: Path) -> None:
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise PipelineError(f"{path}: not a JSON metrics file ({exc})") from None
        link = self.new_link("metrics", path)
        if "checkpoint" in metrics:  # written by `mer evaluate`
            recorded = metrics["checkpoint"]
            checkpoint = self.resolve(recorded["path"])
            link.facts["evaluated"] = f"{recorded['corpus']} checkpoint, epoch {recorded['epoch']}, seed {recorded['seed']}"
            expected_weights = recorded.get("weights_sha256")
        elif (path.parent / BEST_DIR / CHECKPOINT_JSON).is_file():  # written by `mer train`
            checkpoint, expected_weights = path.parent / BEST_DIR, None
            link.facts["selected"] = f"epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')} (on dev)"
        else:
            raise PipelineError(f"{path}: names no checkpoint (not written by `mer evaluate` or `mer train`)")
        for split in ("dev", "test"):
            if isinstance(metrics.get(split), dict):
                scores = metrics[split]
                link.facts[split] = {k: scores[k] for k in ("weighted_f1", "accuracy", "macro_f1") if k in scores}
        if metrics.get("feature_shuffle") is not None:
            link.check(False, "", "trained on SHUFFLED features (an alignment check, not a result)", WARNING)
        if not self.present(link, checkpoint, "checkpoint"):
            return
        record = json.loads((checkpoint / CHECKPOINT_JSON).read_text(encoding="utf-8"))
        if expected_weights is not None:
            link.check(
                record.get("weights_sha256") == expected_weights,
                f"the checkpoint there now is the one evaluated (weights {_short(expected_weights)})",
                f"the checkpoint at {self.rel(checkpoint)} has weights {_short(record.get('weights_sha256'))}, "
                f"not the evaluated {_short(expected_weights)}: re-run evaluation",
            )
        else:
            link.check(
                record.get("epoch") == metrics.get("best_epoch"),
                f"best/ holds the selected epoch {metrics.get('best_epoch')}",
                f"best/ holds epoch {record.get('epoch')}, the metrics selected epoch {metrics.get('best_epoch')}",
            )
        link.inputs.append(self.visit(checkpoint))

    def checkpoint(self, path: Path) -> None:
        record = json.loads((path / CHECKPOINT_JSON).read_text(encoding="utf-8"))
        link = self.new_link("checkpoint", path)
        code = record.get("code", {})
        data = record.get("data", {})
        link.facts.update({
            "corpus": record.get("corpus"),
            "model name": record.get("model_name") or "cmath",  # a checkpoint from before baselines: cmath
            "epoch": record.get("epoch"),
            "seed": record.get("seed"),
            "git commit": f"{code.get('git_commit') or 'unknown'}{' (uncommitted changes)' if code.get('git_dirty') else ''}",
            "mixed precision": record.get("mixed_precision"),
            "modalities": record.get("modalities", []),
            "train config": {k: v for k, v in record.get("train_config", {}).items() if k != "model"},
            "model": record.get("train_config", {}).get("model", {}),
        })
        for name, key in ((WEIGHTS_FILE, "weights_sha256"), (STATS_FILE, "feature_stats_sha256")):
            if record.get(key) and (path / name).is_file():
                now = sha256_file(path / name)
                link.check(now == record[key], f"{name} matches its recorded sha256 {_short(now)}",
                           f"{name} changed after training (recorded {_short(record[key])}, now {_short(now)})")
        self._check_model_sources(link, code.get("model_sources_sha256", {}))
        self._check_train_params(link, record)
        if data.get("feature_shuffle") is not None:
            link.check(False, "", "trained on SHUFFLED features (an alignment check, not a result)", WARNING)

        manifest = self.resolve(data.get("manifest", ""))
        expected_manifest = data.get("manifest_sha256")
        if self.present(link, manifest, "manifest"):
            now = sha256_file(manifest)
            link.check(now == expected_manifest, f"manifest {self.rel(manifest)} is the one trained on",
                       f"manifest {self.rel(manifest)} changed since training (recorded {_short(expected_manifest)}, "
                       f"now {_short(now)})")
        for modality, store in sorted(data.get("stores", {}).items()):
            folder = self.resolve(store["folder"])
            rel = self.rel(folder)
            if not self.present(link, folder, f"{modality} store"):
                continue
            index = folder / INDEX_FILE
            now = sha256_file(index) if index.is_file() else None
            link.check(now == store.get("index_sha256"), f"{modality} store {rel} is the one trained on",
                       f"{modality} store {rel} changed since training ({INDEX_FILE} recorded "
                       f"{_short(store.get('index_sha256'))}, now {_short(now)})")
            built_from = store.get("metadata", {}).get("manifest_sha256")
            link.check(built_from == expected_manifest, f"{modality} store was built from the training manifest",
                       f"{modality} store was built from another manifest ({_short(built_from)}) than the one the "
                       f"checkpoint was trained on ({_short(expected_manifest)})")
            link.inputs.append(self.store(folder, manifest=manifest))
        if manifest.exists():
            link.inputs.append(self.visit(manifest))

    def _check_model_sources(self, link: Link, recorded: dict[str, str]) -> None:
        # names are project-relative paths; a checkpoint from before the layered layout recorded bare
        # file names of model/, which no longer exist there, so it warns
        changed = [name for name, digest in sorted(recorded.items())
                   if not (self.project / name).is_file() or sha256_file(self.project / name) != digest]
        if recorded and (self.project / "model").is_dir():
            link.check(not changed, "model code unchanged since training",
                       f"model code changed since training ({', '.join(changed)}): the checkpoint is from the "
                       "recorded git commit; `dvc status` lists the stages to rerun", WARNING)

    def _check_train_params(self, link: Link, record: dict[str, Any]) -> None:
        """The recorded train config against dvc.lock's params of this stage (train.<key> + train.<corpus>)."""
        if not link.stage or not self.lock.params(link.stage):
            return
        locked = self.lock.params(link.stage)
        corpus = record.get("corpus", "")
        effective = {k.split(".", 1)[1]: v for k, v in locked.items() if k.startswith("train.") and k != f"train.{corpus}"}
        override = locked.get(f"train.{corpus}") or {}
        effective.update({k: v for k, v in override.items() if k != "model"})
        effective["model"] = {**(effective.get("model") or {}), **(override.get("model") or {})}
        config = record.get("train_config", {})
        differ = [k for k, v in effective.items()
                  if k in config and (config[k] != v if k != "model" else any(config[k].get(m) != x for m, x in v.items()))]
        link.check(not differ, f"train config agrees with dvc.lock ({link.stage})",
                   f"train config differs from dvc.lock's {link.stage} params in {', '.join(differ)}")

    def store(self, folder: Path, manifest: Path | None = None) -> str:
        rel = self.rel(folder)
        if rel in self.links:
            return rel
        link = self.new_link("feature_store", folder)
        index_path = folder / INDEX_FILE
        if not link.check(index_path.is_file(), f"the store is finished ({INDEX_FILE} present)",
                          f"the store is unfinished (no {INDEX_FILE}): rerun its `mer extract`"):
            return rel
        index = json.loads(index_path.read_text(encoding="utf-8"))
        store = index.get("store", {})
        weights = store.get("model_sha256")
        link.facts.update({
            "modality": store.get("modality"),
            "feature set": store.get("feature_set") or store.get("modality"),
            "extractor": f"{store.get('extractor')} v{store.get('extractor_version')}",
            "model": f"{store.get('model_id')} (weights sha256 {_short(weights)})" if weights
                     else f"{store.get('model_id')} (no pretrained weights)",
            "params": store.get("params", {}),
            "manifest sha256": _short(store.get("manifest_sha256")),
        })
        fitted = store.get("fitted")
        if fitted:
            link.facts["fitted state"] = (
                f"{fitted.get('file')} sha256 {_short(fitted.get('sha256'))}, fitted on "
                f"{fitted.get('num_inputs')} train-split inputs only (fit sha256 {_short(fitted.get('fit_sha256'))})"
            )
        self._stage_report(link, folder)
        bad = [s["file"] for s in index.get("shards", [])
               if not (folder / s["file"]).is_file() or sha256_file(folder / s["file"]) != s["sha256"]]
        link.check(not bad, f"{len(index.get('shards', []))} shards match {INDEX_FILE}",
                   f"shards changed or missing since the store was written: {', '.join(bad)}")
        if fitted:
            self._check_fitted(link, folder, fitted)
        if weights:  # an extractor without pretrained weights (tfidf) has nothing to check here
            self._check_weights(link, store)
        if store.get("code_sha256"):  # imported stores ran no extractor code
            self._check_code(link, store)
        self._check_store_params(link, store)
        manifest = manifest or self._store_manifest(link, folder, store)
        if manifest is not None and self.present(link, manifest, "manifest"):
            now = sha256_file(manifest)
            link.check(now == store.get("manifest_sha256"), f"built from {self.rel(manifest)} as it is now",
                       f"built from another manifest ({_short(store.get('manifest_sha256'))}) than "
                       f"{self.rel(manifest)} ({_short(now)}): rerun extraction")
            link.inputs.append(self.visit(manifest))
        return rel

    def _check_fitted(self, link: Link, folder: Path, fitted: dict[str, Any]) -> None:
        """The fitted state in the store must still hash to what index.json recorded: every shard was
        encoded with that state, so an edited or swapped file is a broken link."""
        path = folder / FITTED_FILE
        now = sha256_file(path) if path.is_file() else None
        recorded = fitted.get("sha256")
        if now is None:
            link.check(False, "", f"the fitted state {FITTED_FILE} recorded in {INDEX_FILE} is missing: rerun extraction")
            return
        link.check(now == recorded, f"{FITTED_FILE} matches {INDEX_FILE} ({_short(now)})",
                   f"{FITTED_FILE} changed since extraction (recorded {_short(recorded)}, now {_short(now)}): "
                   f"the shards were not made with it; rerun extraction")

    def _stage_report(self, link: Link, folder: Path) -> None:
        """The stage's report.json as a fact, checked to add up (in = out + dropped)."""
        if not (folder / REPORT_FILE).is_file():
            link.check(False, "", f"no {REPORT_FILE} in {self.rel(folder)}: its counts cannot be shown", WARNING)
            return
        try:
            report = read_stage_report(folder)
        except PipelineError as exc:
            link.check(False, "", str(exc))
            return
        link.facts["stage report"] = describe_counts(report)
        link.check(True, f"{REPORT_FILE} accounts for every utterance", "")

    def _store_manifest(self, link: Link, folder: Path, store: dict[str, Any]) -> Path | None:
        """The manifest a store was made from: dvc.lock's dep of its stage, else data/prepared/<corpus>."""
        if link.stage:
            for dep in self.lock.stages[link.stage].get("deps", []):
                if dep["path"].endswith(MANIFEST_FILE):
                    return self.resolve(dep["path"])
        guess = folder.parent.parent.parent / "prepared" / str(store.get("corpus")) / MANIFEST_FILE
        return guess if guess.is_file() else None

    def _check_weights(self, link: Link, store: dict[str, Any]) -> None:
        from extractors.base import weights_sha256

        model_id = str(store.get("model_id", ""))
        local = self.resolve(model_id)
        if not local.exists():
            local = _hub_cache_folder(model_id)
        if local is None:
            link.check(False, "", f"weights of {model_id!r} are not on this machine: their sha256 "
                       f"{_short(store.get('model_sha256'))} cannot be checked", WARNING)
            return
        try:
            now = weights_sha256(local)
        except OSError as exc:
            link.check(False, "", f"weights at {local} cannot be read: {exc}")
            return
        link.check(now == store.get("model_sha256"), f"model weights unchanged since extraction ({_short(now)})",
                   f"model weights at {self.rel(local)} changed since extraction (recorded "
                   f"{_short(store.get('model_sha256'))}, now {_short(now)}): rerun extraction")

    def _check_code(self, link: Link, store: dict[str, Any]) -> None:
        """The extractor's code now against the code that made the store (`extractors.base.code_sha256`)."""
        from extractors.base import modules_code_sha256

        # as `extractors.base.code_modules`: the modality's shared module, then the extractor's own
        modules = list(dict.fromkeys([f"extractors.{store.get('modality')}", f"extractors.{store.get('extractor')}"]))
        try:
            now = modules_code_sha256(modules)
        except PipelineError as exc:
            link.check(False, "", f"{exc}: the code that made the store cannot be checked", WARNING)
            return
        recorded = store.get("code_sha256")
        link.check(now == recorded, f"extractor code unchanged since extraction ({_short(now)})",
                   f"the code of {', '.join(modules)} changed since extraction (recorded {_short(recorded)}, "
                   f"now {_short(now)}): rerun extraction")

    def _check_store_params(self, link: Link, store: dict[str, Any]) -> None:
        from extractors.base import RUNTIME_FIELDS

        locked = self.lock.params(link.stage) if link.stage else {}
        section = next((v for k, v in locked.items() if k.startswith("extract.")), None)
        if not isinstance(section, dict):
            return
        recorded = store.get("params", {})
        differ = [k for k, v in section.items() if k not in RUNTIME_FIELDS and k in recorded and recorded[k] != v]
        link.check(not differ, f"params agree with dvc.lock ({link.stage})",
                   f"params differ from dvc.lock's {link.stage} in {', '.join(differ)}")

    def manifest(self, path: Path) -> None:
        link = self.new_link("manifest", path)
        summary_path = path.parent / SUMMARY_FILE
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
        meta = manifest_metadata(path)
        link.facts.update({
            "corpus": meta.get("corpus"),
            "label policy": meta.get("label_policy"),
            "split rule": summary.get("split_rule", "?"),
            "raw tree sha256": _short(meta.get("raw_tree_sha256")),
            "per split": {s: v.get("utterances") for s, v in summary.get("splits", {}).items()},
        })
        self._stage_report(link, path.parent)
        link.check(bool(summary), f"{SUMMARY_FILE} present",
                   f"{SUMMARY_FILE} is missing beside the manifest: its counts and exclusions cannot be shown", WARNING)
        if summary:
            link.check(summary.get("raw_tree_sha256") == meta.get("raw_tree_sha256"),
                       f"{SUMMARY_FILE} belongs to this manifest", f"{SUMMARY_FILE} describes another raw tree")
        if link.stage:
            locked = self.lock.params(link.stage)
            policy = next((v.get("label_policy") for k, v in locked.items() if isinstance(v, dict)), None)
            if policy:
                link.check(policy == meta.get("label_policy"), f"label policy agrees with dvc.lock ({link.stage})",
                           f"label policy {meta.get('label_policy')!r} differs from dvc.lock's {policy!r}")
        if "import" in summary:  # from `mer import-features`: the "raw file" is the pickle, one hash
            pickle = raw_root_of(path.parent, summary) or Path("")
            if self.present(link, pickle, "imported pickle"):
                now = sha256_file(pickle)
                link.check(now == meta.get("raw_tree_sha256"), f"imported pickle {pickle.name} unchanged",
                           f"imported pickle {pickle} changed since import")
            return
        root = self._raw_root(link, path.parent, meta)
        if root is not None:
            link.inputs.append(self.raw_files(root, read_manifest(path), meta))

    def _raw_root(self, link: Link, manifest_dir: Path, meta: dict[str, str]) -> Path | None:
        """The raw folder: dvc.lock's `--root` of the prepare stage (relative to this project, so right
        in any clone), else the root the manifest records (relative to its folder, or absolute for
        a corpus outside the project)."""
        candidates = []
        if link.stage and self.lock.cmd_option(link.stage, "--root"):
            candidates.append(self.resolve(self.lock.cmd_option(link.stage, "--root")))
        candidates.append(raw_root_of(manifest_dir, meta) or Path(""))
        for root in candidates:
            if str(root) not in ("", ".") and root.is_dir():
                return root
        if not meta.get("raw_root") and len(candidates) == 1:
            link.check(False, "", "the manifest records no raw corpus folder: the chain ends here", WARNING)
        else:
            link.check(False, "", f"raw corpus folder {meta.get('raw_root')} not found (moved? the chain stops here)")
        return None

    def raw_files(self, root: Path, rows: list[dict[str, Any]], meta: dict[str, str]) -> str:
        sources = {s["path"]: s for row in rows for s in row["sources"]}
        link = self.new_link("raw_files", root)
        link.facts.update({"files read": len(sources), "tree sha256": _short(meta.get("raw_tree_sha256"))})
        problems = []
        for rel, source in sorted(sources.items()):
            problem = fingerprint_problem(root / rel, source, rehash=self.rehash)
            if problem:
                problems.append(f"{rel} {problem}")
        examples = "; ".join(problems[:RAW_EXAMPLES]) + (f"; and {len(problems) - RAW_EXAMPLES} more" if len(problems) > RAW_EXAMPLES else "")
        link.check(not problems, f"{len(sources)} raw files match their fingerprints",
                   f"{len(problems)} raw files differ from their fingerprints: {examples}")
        if problems:
            link.facts["differing files"] = problems
        return link.path


def _hub_cache_folder(model_id: str) -> Path | None:
    """The local Hugging Face cache folder of a hub id, or None (nothing is downloaded)."""
    if model_id.count("/") > 1 or model_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached, not a hub id (e.g. facenet's "vggface2"): cannot check offline
        return None
