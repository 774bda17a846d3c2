"""Outputs that can never destroy anything else (issue 11, item 1; pipeline/core/outputs.py).

Every stage command is run, through `mer` in this process, with an output path that would destroy or
change something: the path of one of its inputs, a folder above one, a path inside one, an existing
file, a non-empty folder no `mer` stage wrote, a folder another kind of stage wrote, a path under
/proc. Each must end in exit 2 with one line `mer CMD: error: PATH: ...` that says what to do, and
leave every input (and whatever was at the path) byte-identical: the test compares a listing and
the SHA-256 of every file before and after, and checks that no temporary folder was left beside
the output. The refusal comes before any model is loaded or any corpus read, so the cases are
cheap; the inputs are real (the demo corpus, the tiny models, a trained and evaluated synthetic run)
and shared by the module, read-only.

Then the other side: a stage rerun on its own previous output replaces (or resumes) it, and a DVC
run, which deletes non-persistent outputs before a stage and keeps persistent ones, works as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core.atomic import write_marker
from pipeline.core.outputs import MARKER_FILE, OutputPathError, read_marker
from pipeline.corpora.meld import RELEASE_DIR as MELD_RELEASE_DIR
from pipeline.formats.manifest import SUMMARY_FILE, CorpusReadResult, Utterance, build_summary, read_manifest
from tests.helpers.faults import assert_one_line_error, keep_one_meld_dialogue, run_cli, section
from tests.helpers.train_corpus import LABELS, make_corpus

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]

BIN = Path(sys.executable).parent
PROC_OUT = Path("/proc/mer-output-safety/out")
# the smallest demo corpus the generator accepts (tests/pipeline/demo/test_demo_corpus.py)
SMALL_DEMO = {
    "seed": 3, "meld_dialogues_train": 2, "meld_dialogues_dev": 1, "meld_dialogues_test": 1,
    "meld_utterances_per_dialogue": [4, 4], "iemocap_dialogues_train": 4, "iemocap_dialogues_dev": 1,
    "iemocap_dialogues_test": 1, "iemocap_turns_per_dialogue": [4, 4],
}
TRAIN = {
    "seed": 0, "epochs": 1, "lr": 0.003, "batch_size": 2, "patience": 0, "mixed_precision": "no",
    "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
}


# --- the inputs, shared by the module -------------------------------------------------------------


@dataclass
class World:
    """Real inputs of every stage: each attribute is a path some command reads."""

    root: Path
    params: Path  # params.yaml: demo (smallest), extract.text (the tiny RoBERTa), train (1 epoch), evaluate
    raw: Path  # a MELD.Raw copy trimmed to one dialogue
    manifest: Path  # its prepared folder (the manifest records `raw` as its root)
    model: Path  # the tiny RoBERTa folder extract.text.model names
    prepared: Path  # the synthetic corpus (tests/helpers/train_corpus.py) ...
    features: Path  # ... and its three stores
    train: Path  # a real one-epoch training on it
    checkpoint: Path  # train/best
    eval: Path  # a real evaluation of it
    pickle: Path  # a feature pickle, at imp/prepared/meld/ (so `--out imp` would replace the folder holding it)


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_corpus, tiny_models) -> World:
    root = tmp_path_factory.mktemp("inputs")
    demo_root, _ = demo_corpus
    raw = root / "raw" / MELD_RELEASE_DIR
    shutil.copytree(demo_root / MELD_RELEASE_DIR, raw)
    keep_one_meld_dialogue(raw)
    model = root / "models" / "roberta-tiny"
    shutil.copytree(tiny_models["text"], model)
    params = root / "project" / "params.yaml"
    params.parent.mkdir()
    params.write_text(yaml.safe_dump({
        "demo": SMALL_DEMO,
        "extract": {"text": section("text", {"text": model}, device="cpu")},
        "train": TRAIN,
        "evaluate": {"splits": ["dev", "test"], "batch_size": 0},
    }), encoding="utf-8")

    def mer(*argv: str) -> None:
        from pipeline.cli import main

        assert main(list(argv)) == 0, argv

    manifest = root / "prepared-demo" / "meld"
    mer("prepare", "--corpus", "meld", "--root", str(raw), "--out", str(manifest))
    prepared, features = make_corpus(root / "synthetic", dialogues={"train": 6, "dev": 3, "test": 3})
    _write_summary(prepared)
    train, evaluation = root / "train" / "meld", root / "eval" / "meld"
    run = ["--prepared", str(prepared), "--features", str(features)]
    mer("train", "--corpus", "meld", *run, "--out", str(train), "--params", str(params))
    mer("evaluate", "--checkpoint", str(train / "best"), *run, "--out", str(evaluation), "--params", str(params))
    imported = root / "imp" / "prepared" / "meld" / "features.pkl"
    imported.parent.mkdir(parents=True)
    write_feature_pickle(imported)
    return World(root, params, raw, manifest, model, prepared, features, train, train / "best", evaluation, imported)


def _write_summary(prepared: Path) -> None:
    """summary.json as `mer prepare` writes it (the run report reads it)."""
    names = {f.name for f in dataclasses.fields(Utterance)} - {"sources"}
    utterances = [Utterance(**{k: v for k, v in row.items() if k in names}) for row in read_manifest(prepared)]
    result = CorpusReadResult(corpus="meld", label_policy="synthetic", label_names=LABELS, utterances=utterances,
                              excluded=[], split_rule="synthetic", utterances_seen=len(utterances))
    (prepared / SUMMARY_FILE).write_text(json.dumps(build_summary(result, str(prepared)), indent=2), encoding="utf-8")


def write_feature_pickle(path: Path, dialogues: int = 6) -> Path:
    """A small MELD pickle in the DialogueRNN layout (`--format dialoguernn`, 9 items)."""
    rng = np.random.default_rng(0)
    keys = list(range(dialogues))
    items: dict[str, dict] = {name: {} for name in (
        "videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoSentence", "videoSentiments")}
    for d in keys:
        n = 2 + d % 3
        items["videoIDs"][d] = list(range(n))
        items["videoSpeakers"][d] = [[1.0 if s == (d + i) % 9 else 0.0 for s in range(9)] for i in range(n)]
        items["videoLabels"][d] = [int(x) for x in rng.integers(0, 7, n)]
        items["videoText"][d] = rng.standard_normal((n, 6)).astype(np.float32)
        items["videoAudio"][d] = [list(rng.standard_normal(5)) for _ in range(n)]
        items["videoSentence"][d] = [f"utterance {i} of dialogue {d}" for i in range(n)]
        items["videoSentiments"][d] = [int(x) for x in rng.integers(0, 3, n)]
    obj = (items["videoIDs"], items["videoSpeakers"], items["videoLabels"], items["videoText"], items["videoAudio"],
           items["videoSentence"], keys[:-2], keys[-2:], items["videoSentiments"])
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


# --- the stage commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    command: str
    argv: Callable[[World, str], list[str]]  # (world, output path) -> the command line
    inputs: dict[str, str]  # the command's inputs: option -> World attribute
    option: str = "--out"
    # the output folder a foreign or another stage's folder must sit at to be in the way, given --out
    in_the_way: Callable[[Path], Path] = field(default=lambda out: out)
    # "a folder above the input": the --out whose output would hold the input
    above: Callable[[Path], Path] = field(default=lambda path: path.parent)


def _run_args(w: World) -> list[str]:
    return ["--prepared", str(w.prepared), "--features", str(w.features)]


STAGES = {
    stage.command: stage
    for stage in (
        Stage("demo-corpus", lambda w, out: ["demo-corpus", out, "--params", str(w.params)], {"--params": "params"},
              option="OUT"),
        Stage("prepare", lambda w, out: ["prepare", "--corpus", "meld", "--root", str(w.raw), "--out", out],
              {"--root": "raw"}),
        Stage("tiny-models", lambda w, out: ["tiny-models", out], {}, option="OUT"),
        Stage("extract", lambda w, out: ["extract", "text", "--manifest", str(w.manifest), "--out", out,
                                         "--params", str(w.params)],
              {"--manifest": "manifest", "the manifest's raw root": "raw", "extract.text.model": "model",
               "--params": "params"}),
        Stage("train", lambda w, out: ["train", "--corpus", "meld", *_run_args(w), "--out", out,
                                       "--params", str(w.params)],
              {"--prepared": "prepared", "--features": "features", "--params": "params"}),
        Stage("evaluate", lambda w, out: ["evaluate", "--checkpoint", str(w.checkpoint), *_run_args(w), "--out", out,
                                          "--params", str(w.params)],
              {"--checkpoint": "checkpoint", "--prepared": "prepared", "--features": "features",
               "--params": "params"}),
        Stage("report", lambda w, out: ["report", "--corpus", "meld", *_run_args(w), "--train", str(w.train),
                                        "--eval", str(w.eval), "--out", out],
              {"--prepared": "prepared", "--features": "features", "--train": "train", "--eval": "eval"}),
        Stage("import-features", lambda w, out: ["import-features", str(w.pickle), "--format", "dialoguernn",
                                                 "--corpus", "meld", "--out", out],
              {"PICKLE": "pickle"}, in_the_way=lambda out: out / "prepared" / "meld",
              above=lambda path: path.parents[2]),
        Stage("lineage", lambda w, out: ["lineage", str(w.checkpoint), "--json", out], {"PATH": "checkpoint"},
              option="--json"),
    )
}

INPUT_CASES = ("is-the-input", "above-the-input", "inside-the-input")
OTHER_CASES = ("existing-file", "foreign-folder", "another-stages-output", "under-proc")
CASES = [
    pytest.param(name, case, label, id=f"{name}-{case}-{label}")
    for name, stage in STAGES.items() for label in stage.inputs for case in INPUT_CASES
] + [pytest.param(name, case, None, id=f"{name}-{case}") for name in STAGES for case in OTHER_CASES]


def _output_for(world: World, stage: Stage, case: str, label: str | None, tmp_path: Path) -> Path:
    """The output path of the case, with whatever the case needs put in its way."""
    if case in INPUT_CASES:
        source = getattr(world, stage.inputs[label])
        return {"is-the-input": source, "above-the-input": stage.above(source),
                "inside-the-input": source / "sub"}[case]
    if case == "under-proc":
        return PROC_OUT
    out = tmp_path / "out"
    if case == "existing-file":
        out.write_bytes(b"the user's own file\n")
        return out
    folder = stage.in_the_way(out)
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("the user's own notes\n")
    if case == "another-stages-output":
        write_marker(folder, "report" if stage.command != "report" else "evaluate")
    return out


def _snapshot(*paths: Path) -> dict[str, str | None]:
    """Every file under `paths` with its SHA-256, every folder as "folder", an absent path as None."""
    found: dict[str, str | None] = {}
    for path in paths:
        if not os.path.lexists(path):
            found[str(path)] = None
            continue
        for item in [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]:
            found[str(item)] = "folder" if item.is_dir() else hashlib.sha256(item.read_bytes()).hexdigest()
    return found


def _listing(folder: Path) -> list[str] | None:
    return sorted(os.listdir(folder)) if folder.is_dir() and not str(folder).startswith("/proc") else None


@pytest.mark.parametrize(("name", "case", "label"), CASES)
def test_an_output_that_would_destroy_something_is_refused(world, name, case, label, tmp_path, capsys):
    stage = STAGES[name]
    out = _output_for(world, stage, case, label, tmp_path)
    inputs = [getattr(world, attr) for attr in stage.inputs.values()]
    before, beside = _snapshot(*inputs, out), _listing(out.parent)
    code, _, err = run_cli(stage.argv(world, str(out)), capsys)
    line = assert_one_line_error(code, err, name, str(out), "choose another")
    if case in INPUT_CASES:
        assert "the input " in line and label in line
    elif case in ("foreign-folder", "another-stages-output") and name != "lineage":
        assert "delete it yourself if you mean to replace it" in line
        assert f"not the output of `mer {name}`" in line
    assert _snapshot(*inputs, out) == before, "an input, or what was at the output path, changed"
    assert _listing(out.parent) == beside, "something was left beside the output"


def test_the_messages_say_what_is_wrong(world, tmp_path, capsys):
    """One example per kind of refusal, as the user reads it."""
    evaluate = STAGES["evaluate"]
    code, _, err = run_cli(evaluate.argv(world, str(world.train)), capsys)  # the example
    assert_one_line_error(code, err, "evaluate", f"{world.train}: --out contains the input --checkpoint",
                          "replacing it would delete that input")
    code, _, err = run_cli(evaluate.argv(world, str(world.prepared / "sub")), capsys)
    assert_one_line_error(code, err, "evaluate", "lies inside the input --prepared")
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(evaluate.argv(world, str(tmp_path / "file")), capsys)
    assert_one_line_error(code, err, "evaluate", "--out is an existing file, not a folder")
    code, _, err = run_cli(evaluate.argv(world, str(tmp_path)), capsys)
    assert_one_line_error(code, err, "evaluate", "is a non-empty folder that is not the output of `mer evaluate`",
                          f"it has no {MARKER_FILE}")
    code, _, err = run_cli(evaluate.argv(world, str(world.eval.parent)), capsys)  # holds eval/meld, not an input
    assert_one_line_error(code, err, "evaluate", "no mer stage wrote it", "it holds outputs of mer stages: meld/ (`mer evaluate`)")
    extract = STAGES["extract"]
    code, _, err = run_cli(extract.argv(world, str(world.eval)), capsys)
    assert_one_line_error(code, err, "extract", "holds the output of `mer evaluate`, not the output of `mer extract`")
    code, _, err = run_cli(extract.argv(world, "/sys/mer-output-safety"), capsys)
    assert_one_line_error(code, err, "extract", "/sys/mer-output-safety: --out cannot be created",
                          "nothing can be created in /sys")
    code, _, err = run_cli(extract.argv(world, str(tmp_path / "file" / "store")), capsys)
    assert_one_line_error(code, err, "extract", "cannot be created", "is not a folder")


def test_an_output_that_is_a_symlink_to_an_input_is_refused(world, tmp_path, capsys):
    link = tmp_path / "looks-new"
    link.symlink_to(world.raw, target_is_directory=True)
    before = _snapshot(world.raw)
    code, _, err = run_cli(STAGES["prepare"].argv(world, str(link)), capsys)
    assert_one_line_error(code, err, "prepare", str(link), "is the input --root")
    assert _snapshot(world.raw) == before and link.is_symlink()


# --- what must still work -------------------------------------------------------------------------


def _rerun(world: World, name: str, tmp_path: Path, tiny_models) -> Path:
    """Run the stage into a fresh output (or take the module's), return that output; the test reruns it."""
    stage = STAGES[name]
    if name == "tiny-models":  # a copy of the session's build: one more build is the rerun
        out = tmp_path / "models"
        shutil.copytree(tiny_models["text"].parent, out)
        return out
    if name == "train":
        return world.train
    if name == "lineage":
        out = tmp_path / "lineage.json"
    elif name == "import-features":
        out = tmp_path / "imported"
        world = dataclasses.replace(world, pickle=write_feature_pickle(tmp_path / "features.pkl"))
    else:
        out = tmp_path / "out"
    from pipeline.cli import main

    # lineage exits 1 on a broken link (the synthetic manifest has no raw files); it still writes the JSON
    assert main(stage.argv(world, str(out))) in ((0, 1) if name == "lineage" else (0,))
    return out


# a file each stage's output must hold after the rerun
RESULT = {"demo-corpus": "demo_corpus.json", "prepare": "manifest.parquet", "tiny-models": "roberta-tiny/model.safetensors",
          "extract": "index.json", "train": "metrics.json", "evaluate": "metrics.json", "report": "report.html",
          "import-features": "prepared/meld/manifest.parquet", "lineage": ""}


@pytest.mark.parametrize("name", list(STAGES))
def test_a_rerun_on_its_own_output_replaces_it(world, name, tmp_path, tiny_models, capsys):
    out = _rerun(world, name, tmp_path, tiny_models)
    if name == "import-features":
        world = dataclasses.replace(world, pickle=tmp_path / "features.pkl")
        marked = [out / "prepared" / "meld", out / "features" / "meld", out / "features" / "meld" / "text"]
    elif name == "lineage":
        marked = []
    else:
        marked = [out]
    stale = out / "prepared" / "meld" / "stale.txt" if name == "import-features" else out / "stale.txt"
    replaced = name in ("demo-corpus", "prepare", "evaluate", "report", "import-features")
    if replaced:
        stale.write_text("from the first run")
    inputs = [getattr(world, attr) for attr in STAGES[name].inputs.values()]
    before = _snapshot(*inputs)
    code, _, err = run_cli(STAGES[name].argv(world, str(out)), capsys)
    assert code in ((0, 1) if name == "lineage" else (0,)), err
    assert _snapshot(*inputs) == before
    for folder in marked:
        assert read_marker(folder) == name, folder
    if replaced:
        assert not stale.exists(), "the first run's folder was not replaced whole"
    assert (out / RESULT[name]).is_file()
    if name == "lineage":
        assert set(json.loads(out.read_text())) >= {"roots", "links", "broken"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


def test_an_unmarked_store_or_training_folder_of_ours_is_resumed(world, tmp_path, capsys):
    """Stores and training folders written before outputs carried a marker (DVC keeps them: persist)."""
    store = tmp_path / "store"
    shutil.copytree(world.features / "text", store)
    (store / MARKER_FILE).unlink()
    train = tmp_path / "train"
    shutil.copytree(world.train, train)
    (train / MARKER_FILE).unlink()
    argv = STAGES["train"].argv(world, str(train))
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert read_marker(train) == "train"
    from pipeline.formats.feature_store import FeatureStoreWriter, StoreMetadata, is_store_folder

    assert is_store_folder(store)
    (store / "notes.txt").write_text("not a store file")
    assert not is_store_folder(store)
    with pytest.raises(OutputPathError, match="not the output of `mer extract`"):
        FeatureStoreWriter(store, StoreMetadata(*"abcdefg"), ["u1"], 1).__enter__()


def test_a_dvc_run_is_unaffected(world, tmp_path):
    """`dvc repro` deletes a non-persistent output before its stage and keeps a persistent one: both rerun."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(world.raw, project / "raw")
    prepare = f"{BIN / 'mer'} prepare --corpus meld --root raw --out"
    stages = {
        "prepare": {"cmd": f"{prepare} out/meld", "deps": ["raw"], "outs": ["out/meld"]},
        "prepare_persist": {"cmd": f"{prepare} out/persist", "deps": ["raw"],
                            "outs": [{"out/persist": {"persist": True}}]},
    }
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}), encoding="utf-8")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def dvc(*args: str) -> str:
        done = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    dvc("init", "--no-scm")
    dvc("repro")
    dvc("repro", "--force")  # the outputs exist now: deleted first (prepare) or kept and replaced (persist)
    for out in ("out/meld", "out/persist"):
        assert read_marker(project / out) == "prepare"
        assert (project / out / "manifest.parquet").is_file()
    assert "up to date" in dvc("status").lower()
