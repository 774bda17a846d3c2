"""The main job, as a user runs it: `dvc repro` on the demo corpus in a fresh copy of the project."""

from __future__ import annotations

import contextlib
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import PROJECT_ROOT
from tests.helpers.dvc_deps import (
    dvc_stages,
    missing_code_deps,
    read_module_log,
    stages_using,
    suggested_code_deps,
    unused_code_deps,
)
from tests.helpers.report_page import page_svgs, page_table, parse_page
from pipeline.formats.feature_store import FeatureStoreReader
from pipeline.formats.manifest import manifest_metadata, read_manifest

BIN = Path(sys.executable).parent
LOSO = Path("protocols/iemocap-loso/dvc.yaml")
FEATURE_SETS = ("text", "audio", "audio_egemaps", "face")  # params.yaml's extract sections, in order
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **extra_env,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@localhost",
        "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@localhost",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project's tracked and not-ignored files, as a fresh clone would have them."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    dest = tmp_path_factory.mktemp("clone")
    for name in filter(None, files):
        if (PROJECT_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, dest / name)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "clone"], dest)
    # every `mer` command of the run logs the project modules it loaded (checked against dvc.yaml below)
    run(["dvc", "repro"], dest, MER_MODULE_LOG=str(module_log(dest)))
    # the IEMOCAP leave-one-session-out protocol beside the main pipeline (its stages are in the same
    # DVC index, so the deps checks and `dvc status` below cover them too)
    run(["dvc", "repro", str(LOSO)], dest, MER_MODULE_LOG=str(module_log(dest)))
    return dest


def module_log(project: Path) -> Path:
    return project.parent / "module-log.jsonl"  # beside the project, so neither git nor DVC sees it


def test_dvc_repro_prepares_both_demo_layouts(project):
    truth = json.loads((project / "data/demo/demo_corpus.json").read_text())
    for corpus in ("meld", "iemocap"):
        summary = json.loads((project / f"data/prepared/{corpus}/summary.json").read_text())
        rows = read_manifest(project / f"data/prepared/{corpus}")
        assert summary["counts"]["utterances_out"] == len(rows) > 50
        assert sum(s["utterances"] for s in summary["splits"].values()) == len(rows)
        assert set(summary["splits"]) == {"train", "dev", "test"}
        assert truth  # the generator's record of what it planted exists beside the corpus


@contextlib.contextmanager
def edited_params(project: Path, old: str, new: str):
    """Edit params.yaml for one test; afterwards restore params, dvc.lock and the outputs (from DVC's cache)."""
    params, lock = project / "params.yaml", project / "dvc.lock"
    saved_params, saved_lock = params.read_text(), lock.read_text()
    assert old in saved_params
    params.write_text(saved_params.replace(old, new))
    try:
        yield
    finally:
        params.write_text(saved_params)
        lock.write_text(saved_lock)
        run(["dvc", "checkout", "--force"], project)


def test_dvc_repro_extracts_every_modality_of_both_layouts(project):
    """Every manifest utterance is in each store or reported with its reason (the planted quirks included)."""
    for corpus in ("meld", "iemocap"):
        ids = [r["utterance_id"] for r in read_manifest(project / f"data/prepared/{corpus}")]
        for modality in ("text", "audio", "face"):
            reader = FeatureStoreReader(project / f"data/features/{corpus}/{modality}")
            missing = {m["utterance_id"]: m["reason"] for m in reader.report["missing"]}
            assert sorted([*reader.utterance_ids, *missing]) == sorted(ids), (corpus, modality)
            assert len(reader.utterance_ids) > 0.8 * len(ids), (corpus, modality, missing)
            assert reader.availability().mask.tolist() == [uid in reader for uid in ids]
    meld_audio = FeatureStoreReader(project / "data/features/meld/audio").report
    assert "train_dia3_utt2" in {m["utterance_id"] for m in meld_audio["missing"]}  # the planted corrupt clip


def test_dvc_repro_trains_and_evaluates_both_corpora_far_above_chance(project):
    """The whole chain on the planted demo signal: test weighted F1 > 0.5 (chance: 1/7 MELD, 1/6 IEMOCAP)."""
    for corpus in ("meld", "iemocap"):
        metrics = json.loads((project / f"data/eval/{corpus}/metrics.json").read_text())
        assert metrics["test"]["weighted_f1"] > 0.5, (corpus, metrics["test"])
        test_ids = {r["utterance_id"] for r in read_manifest(project / f"data/prepared/{corpus}") if r["split"] == "test"}
        lines = (project / f"data/eval/{corpus}/predictions.csv").read_text().splitlines()
        assert {line.split(",")[0] for line in lines[1:]} == test_ids
        assert (project / f"data/train/{corpus}/best/model.safetensors").is_file()


SHUFFLED_CEILING = 0.35  # chance is about 1/7 (MELD) and 1/6 (IEMOCAP); measured 0.03-0.20 over three seeds


def test_shuffling_the_extracted_features_drops_the_demo_to_chance(project, tmp_path):
    """The same training on the same stores, each utterance given another one's features: the signal
    the real run found (test weighted F1 > 0.5) is gone. So extraction, storage and loading keep
    every feature with its own utterance."""
    from pipeline.stages.train import load_train_config, train

    for corpus in ("meld", "iemocap"):
        config = load_train_config(project / "params.yaml", corpus)
        shuffled = train(corpus, project / f"data/prepared/{corpus}", project / f"data/features/{corpus}",
                         tmp_path / corpus, config, cpu=True, feature_shuffle=1, log=lambda line: None)
        aligned = json.loads((project / f"data/train/{corpus}/metrics.json").read_text())
        assert shuffled["feature_shuffle"] == 1 and aligned["feature_shuffle"] is None
        assert shuffled["test"]["weighted_f1"] < SHUFFLED_CEILING < 0.5 < aligned["test"]["weighted_f1"], corpus


def test_dvc_repro_renders_the_run_page_of_each_corpus(project):
    """`report@<corpus>` on the real demo run: a well-formed page whose scores and counts are the run's."""
    for corpus in ("meld", "iemocap"):
        page = (project / f"data/report/{corpus}/report.html").read_text(encoding="utf-8")
        parser = parse_page(page)  # every tag closed in order
        svgs = page_svgs(page)  # every figure parses as SVG
        assert len(svgs) >= 2 and all(svg.tag.endswith("svg") for svg in svgs)
        summary = json.loads((project / f"data/prepared/{corpus}/summary.json").read_text())
        splits = page_table(parser, "split")
        assert {name: splits[name]["utterances"] for name in summary["splits"]} == {
            name: str(info["utterances"]) for name, info in summary["splits"].items()
        }
        metrics = json.loads((project / f"data/eval/{corpus}/metrics.json").read_text())
        assert f"{metrics['test']['weighted_f1']:.4f}" in page
        assert (project / f"data/report/{corpus}/report.md").is_file()


def test_the_loso_protocol_tests_each_session_once_and_aggregates_the_five_folds(project):
    summary = json.loads((project / "data/loso/iemocap/summary.json").read_text())
    assert summary["count"] == 5 and summary["model"] == "cmath"
    assert [r["split"] for r in summary["runs"]] == [f"loso-{k}" for k in range(1, 6)]
    tested = []
    for k in range(1, 6):
        fold = project / f"data/loso/iemocap/fold-{k}"
        assert json.loads((fold / "metrics.json").read_text())["split"] == f"loso-{k}"
        state = json.loads((fold / "last/trainer_state.json").read_text())
        assert state["history"]  # trained
    meta_schemes = json.loads(manifest_metadata(project / "data/prepared/iemocap")["split_schemes"])
    for k in range(1, 6):
        tested += meta_schemes[f"loso-{k}"]["test"]
    dialogues = {r["dialogue_id"] for r in read_manifest(project / "data/prepared/iemocap")}
    assert sorted(tested) == sorted(dialogues)  # every dialogue is tested exactly once
    values = [r["test"]["weighted_f1"] for r in summary["runs"]]
    assert summary["mean"]["test.weighted_f1"] == pytest.approx(sum(values) / 5)
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    assert any("data/loso/iemocap/summary.json" in str(entry) for entry in metrics.values()), metrics


def test_dvc_status_is_clean_after_repro(project):
    out = run(["dvc", "status"], project).stdout
    assert "changed" not in out, out


@contextlib.contextmanager
def tampered(path: Path, content: bytes):
    """Replace a file's bytes, then put back the original bytes and timestamps (so fingerprints match again)."""
    original, stat = path.read_bytes(), path.stat()
    path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def lineage(project: Path, *args: str) -> tuple[int, str, dict]:
    out = project / "lineage.json"
    proc = subprocess.run([str(BIN / "mer"), "lineage", *args, "--json", str(out)], cwd=project,
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, proc.stdout, json.loads(out.read_text())


def test_lineage_of_the_demo_metrics_is_whole_and_agrees_with_dvc_lock(project):
    code, text, chain = lineage(project)  # default: every metrics file declared in dvc.yaml
    assert code == 0 and chain["broken"] == [], text
    links = {link["path"]: link for link in chain["links"]}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for corpus in ("meld", "iemocap"):
        evaluation = links[f"data/eval/{corpus}/metrics.json"]
        assert evaluation["stage"] == f"evaluate@{corpus}" and evaluation["inputs"] == [f"data/train/{corpus}/best"]
        checkpoint = links[f"data/train/{corpus}/best"]
        assert checkpoint["stage"] == f"train@{corpus}" and checkpoint["facts"]["model name"] == "cmath"
        # the commit of the code that ran: the installed package's checkout, not the project copy's
        assert checkpoint["facts"]["git commit"].split()[0] == run(["git", "rev-parse", "HEAD"], PROJECT_ROOT).stdout.strip()
        assert set(checkpoint["inputs"]) == {
            *(f"data/features/{corpus}/{m}" for m in ("text", "audio", "face")), f"data/prepared/{corpus}/manifest.parquet"
        }
        for modality in ("text", "audio", "face"):
            store = links[f"data/features/{corpus}/{modality}"]
            assert store["stage"] == f"extract_{corpus}@{modality}" and store["facts"]["feature set"] == modality
            # the params the store recorded are the ones dvc.lock holds for the stage that made it
            locked = lock[store["stage"]]["params"]["params.yaml"][f"extract.{modality}"]
            assert {k: v for k, v in store["facts"]["params"].items() if k in locked} == {
                k: v for k, v in locked.items() if k != "num_workers"
            }
        manifest = links[f"data/prepared/{corpus}/manifest.parquet"]
        root = "data/demo/" + ("MELD.Raw" if corpus == "meld" else "IEMOCAP_full_release")
        assert manifest["stage"] == f"prepare@{corpus}" and manifest["inputs"] == [root]
        sources = {s["path"] for r in read_manifest(project / f"data/prepared/{corpus}") for s in r["sources"]}
        assert links[root]["facts"]["files read"] == len(sources) > 50
    assert "0 broken" in text.splitlines()[-1]


def test_lineage_names_an_edited_raw_file_as_the_broken_link(project):
    csv = project / "data/demo/MELD.Raw/dev_sent_emo.csv"
    with tampered(csv, csv.read_bytes().replace(b"Ross", b"Rosa", 1)):  # same size, other content
        code, text, chain = lineage(project, "data/eval/meld/metrics.json")
        assert code == 1
        assert chain["broken"] == ["data/demo/MELD.Raw: 1 raw files differ from their fingerprints: "
                                   "dev_sent_emo.csv changed content (sha256)"], text
        assert "BROKEN data/demo/MELD.Raw" in text
    assert lineage(project, "data/eval/meld/metrics.json")[0] == 0


def test_lineage_names_a_swapped_shard_and_a_store_from_another_manifest(project):
    store = project / "data/features/iemocap/face"
    shards = sorted(store.glob("shard-*.safetensors"))
    assert len(shards) >= 2
    with tampered(shards[1], shards[0].read_bytes()):
        code, _, chain = lineage(project, "data/eval/iemocap/metrics.json")
        assert code == 1
        assert chain["broken"] == [f"data/features/iemocap/face: shards changed or missing since the store was "
                                   f"written: {shards[1].name}"]
    # a store rebuilt from another manifest: the checkpoint's record and the store disagree
    index = store / "index.json"
    other = index.read_bytes().replace(b'"manifest_sha256": "', b'"manifest_sha256": "0', 1)
    with tampered(index, other):
        code, _, chain = lineage(project, "data/train/iemocap/best")
        assert code == 1
        assert any("face store data/features/iemocap/face changed since training" in b for b in chain["broken"])
        assert any("built from another manifest" in b for b in chain["broken"])


def test_lineage_names_weights_changed_since_extraction(project):
    weights = project / "data/models/facenet-random.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    with tampered(weights, bytes(data)):
        code, _, chain = lineage(project, "data/features/meld/face")
        assert code == 1
        assert len(chain["broken"]) == 1 and "model weights at data/models/facenet-random.safetensors changed" in chain["broken"][0]


def store_files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir()) if not p.name.startswith(".")}


def test_a_cp_a_copy_of_the_project_extracts_its_own_clips_and_passes_lineage(project, tmp_path):
    """Break a clip in the original, re-extract in the copy: the copy's store is byte-identical to the
    original's (it read its own intact clip), and lineage passes in the copy."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)
    row = next(r for r in read_manifest(project / "data/prepared/meld") if r["has_audio"])
    store = "data/features/meld/audio"
    with tampered(project / "data/demo/MELD.Raw" / row["audio_path"], b"not an mp4"):
        shutil.rmtree(copy / store)  # a persisted store would otherwise be resumed, reading nothing
        run(["dvc", "repro", "--single-item", "extract_meld@audio"], copy)
        assert store_files(copy / store) == store_files(project / store)
        code, text, chain = lineage(copy)
        assert code == 0 and chain["broken"] == [], text
        assert lineage(project)[0] == 1  # the original does see its broken clip


def test_a_git_clone_and_dvc_pull_passes_lineage(project, tmp_path):
    """A fresh clone pulled from a DVC remote: every raw file has a new mtime, its content decides."""
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run(["dvc", "remote", "add", "--local", "--default", "--force", "demo", str(remote)], project)
    run(["dvc", "push", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "reproduced"], project)
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "--default", "demo", str(remote)], clone)
    run(["dvc", "pull", "-q"], clone)
    assert "changed" not in run(["dvc", "status"], clone).stdout
    clip = next((clone / "data/demo/MELD.Raw").rglob("*.mp4"))
    assert clip.stat().st_mtime_ns != (project / clip.relative_to(clone)).stat().st_mtime_ns
    code, text, chain = lineage(clone)
    assert code == 0 and chain["broken"] == [], text


def test_changing_audio_settings_reruns_only_the_audio_stages(project):
    untouched = {
        p: p.stat().st_mtime_ns
        for corpus in ("meld", "iemocap")
        for modality in ("text", "face")
        for p in (project / f"data/features/{corpus}/{modality}").iterdir()
    }
    with edited_params(project, "pooling: mean_std", "pooling: mean"):
        status = run(["dvc", "status"], project).stdout
        stages = {line.rstrip(":").strip() for line in status.splitlines() if line and not line.startswith(("\t", " "))}
        assert stages == {"extract_meld@audio", "extract_iemocap@audio"}, status
        run(["dvc", "repro"], project)
        assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
        audio = FeatureStoreReader(project / "data/features/meld/audio")
        assert audio.metadata["params"]["pooling"] == "mean"
        assert "changed" not in run(["dvc", "status", "dvc.yaml"], project).stdout
        # the protocol trains on the IEMOCAP audio store too: its folds are now out of date, and say so
        stale = set(json.loads(run(["dvc", "status", "--json", str(LOSO)], project).stdout))
        assert stale == LOSO_TRAIN, stale
    assert "changed" not in run(["dvc", "status"], project).stdout  # restored for the next test


def test_choosing_another_audio_feature_set_retrains_without_reextracting(project):
    """`train.features.audio`: the eGeMAPS store the demo already built replaces the wav2vec2 one."""
    with edited_params(project, "    audio: audio                  #", "    audio: audio_egemaps          #"):
        trained = {"train@meld", "train@iemocap", "evaluate@meld", "evaluate@iemocap", "report@meld", "report@iemocap"}
        assert stale_stages(project) == trained | LOSO_TRAIN  # no extract stage: both stores exist
        run(["dvc", "repro", "report@meld"], project)
        record = json.loads((project / "data/train/meld/best/checkpoint.json").read_text())
        assert record["train_config"]["features"]["audio"] == "audio_egemaps"
        assert record["model_config"]["input_dims"]["audio"] == 88  # eGeMAPSv02 functionals
        code, text, chain = lineage(project, "data/eval/meld/metrics.json")
        assert code == 0 and chain["broken"] == [], text
        store = {link["path"]: link for link in chain["links"]}["data/features/meld/audio_egemaps"]
        assert store["stage"] == "extract_meld@audio_egemaps" and store["facts"]["feature set"] == "audio_egemaps"
        assert store["facts"]["extractor"] == "opensmile v1"
        assert "audio_egemaps" in (project / "data/report/meld/report.md").read_text()
    assert "changed" not in run(["dvc", "status"], project).stdout


def test_changing_one_corpus_params_reruns_only_its_branch(project):
    with edited_params(project, "label_policy: benchmark", "label_policy: four-class"):
        status = run(["dvc", "status"], project).stdout
        assert "prepare@iemocap" in status
        assert "prepare@meld" not in status and "demo_corpus" not in status and "extract_meld" not in status
        run(["dvc", "repro", "--single-item", "prepare@iemocap"], project)
        summary = json.loads((project / "data/prepared/iemocap/summary.json").read_text())
        assert summary["label_policy"] == "four-class"
        assert list(summary["label_map"]) == ["ang", "hap", "sad", "neu"]
        downstream = run(["dvc", "status"], project).stdout  # the new manifest invalidates its extract stages
        assert all(f"extract_iemocap@{s}" in downstream for s in FEATURE_SETS), downstream
        assert "extract_meld" not in downstream
    assert "changed" not in run(["dvc", "status"], project).stdout


# --- DVC code deps ----------------------------------------------------------------------------------


def test_every_stage_depends_on_exactly_the_project_modules_its_command_loaded(project):
    """What each `mer` command really imported during `dvc repro` against its stage's deps in dvc.yaml."""
    stages = dvc_stages(project)
    # the main pipeline (one extract stage per feature set and corpus), and the LOSO protocol (5 folds + aggregate)
    assert len(stages) == 10 + 2 * len(FEATURE_SETS) + 6
    loaded = read_module_log(module_log(project))
    missing = missing_code_deps(stages, loaded)
    # and no more: a dep on a module the command never loads would mark the stage stale for nothing
    unused = unused_code_deps(stages, loaded, project)
    exact = {s.name: suggested_code_deps(loaded.get(s.argv, set()), project) for s in stages}
    advice = "\n".join(f"  {name}: the exact code deps are {exact[name]}" for name in sorted({*missing, *unused}))
    assert missing == {}, f"stages missing code deps: {missing}\n{advice}"
    assert unused == {}, f"code deps never loaded: {unused}\n{advice}"


def test_the_deps_check_names_a_removed_dep(project, tmp_path):
    """Remove one dep from a copy of dvc.yaml: the check names the stage and the module it no longer covers."""
    copy = tmp_path / "project"
    (copy / ".dvc").mkdir(parents=True)
    (copy / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    shutil.copy2(project / "params.yaml", copy / "params.yaml")
    dvc_yaml = (project / "dvc.yaml").read_text()
    base_dep = re.compile(r"^ *- extractors/base\.py\n", re.MULTILINE)  # the whole line, whatever its indent
    assert len(base_dep.findall(dvc_yaml)) == 1  # once: the extract stages of both corpora share it
    (copy / "dvc.yaml").write_text(base_dep.sub("", dvc_yaml))
    problems = missing_code_deps(dvc_stages(copy), read_module_log(module_log(project)))
    extract_stages = {f"extract_{c}@{s}" for c in ("meld", "iemocap") for s in FEATURE_SETS}
    assert set(problems) == extract_stages
    assert all(problems[s] == ["extractors/base.py"] for s in extract_stages), problems


# one module per layer, and the stages that must go stale when it changes (None: every stage)
LOSO_TRAIN = {f"{LOSO}:train@{fold}" for fold in range(1, 6)}  # the protocol's train stages, as DVC names them
LAYER_PROBES = {
    "pipeline/cli.py": None,
    "pipeline/core/errors.py": None,
    "pipeline/formats/feature_store.py": {
        *(f"extract_{c}@{s}" for c in ("meld", "iemocap") for s in FEATURE_SETS),
        "train@meld", "train@iemocap", "evaluate@meld", "evaluate@iemocap",
        "report@meld", "report@iemocap",  # the report reads the stores' index.json (INDEX_FILE)
        *LOSO_TRAIN,
    },
    "pipeline/corpora/meld.py": {"prepare@meld"},
    "pipeline/demo/media.py": {"demo_corpus"},
    # a modality's shared module: every set of that modality; an extractor's own module: its sets only
    "extractors/audio.py": {f"extract_{c}@{s}" for c in ("meld", "iemocap") for s in ("audio", "audio_egemaps")},
    "extractors/opensmile.py": {"extract_meld@audio_egemaps", "extract_iemocap@audio_egemaps"},
    "model/cmath.py": {"train@meld", "train@iemocap", "evaluate@meld", "evaluate@iemocap", *LOSO_TRAIN},
    "pipeline/training/loop.py": {"train@meld", "train@iemocap", "evaluate@meld", "evaluate@iemocap", *LOSO_TRAIN},
    "pipeline/stages/report.py": {"report@meld", "report@iemocap"},
}


def stale_stages(project: Path) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], project).stdout))


@pytest.mark.parametrize("module", sorted(LAYER_PROBES))
def test_editing_a_module_marks_exactly_the_stages_that_load_it(project, module):
    """An edit to a module leaves every stage whose command loads it stale in `dvc status`, and no other."""
    stages, loaded = dvc_stages(project), read_module_log(module_log(project))
    users = stages_using(module, stages, loaded)
    expected = LAYER_PROBES[module]
    assert users == (expected if expected is not None else {s.name for s in stages}), module
    assert stale_stages(project) == set()
    path = project / module
    with tampered(path, path.read_bytes() + b"\n# edited by the test\n"):
        assert stale_stages(project) == users, module
    assert stale_stages(project) == set()
