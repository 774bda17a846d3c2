"""One lock per output (issue 11, item 4; pipeline/core/locks.py).

Every stage that writes an output holds that output's lock for its whole run: `.<name>.lock` beside
the output (a feature store: `.lock` inside it). For each stage command the test holds the lock
itself (a flock is per open file, so `mer` run in this process meets it as another process would)
and checks that

- the command refuses at once: exit 2, one line naming the lock file and `--wait`, and the output
  is left as it was;
- with `--wait` longer than the hold it waits, and succeeds once the lock is released;
- a lock whose holder was killed with SIGKILL is free: the kernel dropped it, the leftover lock
  file does not block, and the run removes it.

Inputs are small and shared by the module: a trimmed copy of the demo MELD tree, a synthetic
trained and evaluated corpus (tests/helpers/train_corpus.py), a small feature pickle.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.core.locks import OutputLock, lock_path
from pipeline.corpora.meld import RELEASE_DIR as MELD_RELEASE_DIR
from tests.faults.test_output_safety import SMALL_DEMO, TRAIN, _write_summary, write_feature_pickle
from tests.helpers.faults import assert_one_line_error, keep_one_meld_dialogue, run_cli, section
from tests.helpers.train_corpus import make_corpus

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("one_torch_thread")]

HOLD_S = 0.6  # how long the test holds a lock before releasing it to a waiting run
WAIT_S = "120"  # a --wait far longer than the hold


@dataclass
class World:
    params: Path
    raw: Path  # a MELD.Raw copy trimmed to one dialogue per split
    manifest: Path  # its prepared folder
    prepared: Path  # the synthetic corpus ...
    features: Path  # ... its stores
    train: Path  # a one-epoch training on it
    eval: Path  # its evaluation
    pickle: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_corpus, tiny_models) -> World:
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("lock-inputs")
    demo_root, _ = demo_corpus
    raw = root / "raw" / MELD_RELEASE_DIR
    shutil.copytree(demo_root / MELD_RELEASE_DIR, raw)
    keep_one_meld_dialogue(raw)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({
        "demo": SMALL_DEMO,
        "extract": {"text": section("text", tiny_models, device="cpu")},
        "train": TRAIN,
        "evaluate": {"splits": ["dev", "test"], "batch_size": 0},
    }), encoding="utf-8")
    manifest = root / "prepared-demo" / "meld"
    assert main(["prepare", "--corpus", "meld", "--root", str(raw), "--out", str(manifest)]) == 0
    prepared, features = make_corpus(root / "synthetic", dialogues={"train": 6, "dev": 3, "test": 3})
    _write_summary(prepared)
    train, evaluation = root / "train" / "meld", root / "eval" / "meld"
    run = ["--prepared", str(prepared), "--features", str(features)]
    assert main(["train", "--corpus", "meld", *run, "--out", str(train), "--params", str(params)]) == 0
    assert main(["evaluate", "--checkpoint", str(train / "best"), *run, "--out", str(evaluation),
                 "--params", str(params)]) == 0
    (root / "pickles").mkdir()
    pickle = write_feature_pickle(root / "pickles" / "features.pkl")
    return World(params, raw, manifest, prepared, features, train, evaluation, pickle)


@dataclass(frozen=True)
class Stage:
    command: str
    argv: Callable[[World, Path], list[str]]  # (world, output) -> the command line
    # the output folder whose lock the command takes, given its output argument
    output: Callable[[Path], Path] = lambda out: out
    inside: bool = False  # the lock lives inside the output (a feature store's `.lock`), kept after release

    def lock(self, out: Path) -> Path:
        folder = self.output(out)
        return folder / ".lock" if self.inside else lock_path(folder)


def _run(w: World) -> list[str]:
    return ["--prepared", str(w.prepared), "--features", str(w.features)]


STAGES = {
    stage.command: stage
    for stage in (
        Stage("demo-corpus", lambda w, out: ["demo-corpus", str(out), "--params", str(w.params)]),
        Stage("prepare", lambda w, out: ["prepare", "--corpus", "meld", "--root", str(w.raw), "--out", str(out)]),
        Stage("tiny-models", lambda w, out: ["tiny-models", str(out)]),
        Stage("extract", lambda w, out: ["extract", "text", "--manifest", str(w.manifest), "--out", str(out),
                                         "--params", str(w.params)], inside=True),
        Stage("train", lambda w, out: ["train", "--corpus", "meld", *_run(w), "--out", str(out),
                                       "--params", str(w.params)]),
        Stage("evaluate", lambda w, out: ["evaluate", "--checkpoint", str(w.train / "best"), *_run(w),
                                          "--out", str(out), "--params", str(w.params)]),
        Stage("report", lambda w, out: ["report", "--corpus", "meld", *_run(w), "--train", str(w.train),
                                        "--eval", str(w.eval), "--out", str(out)]),
        # both outputs are locked: holding either one blocks the import
        Stage("import-features", lambda w, out: ["import-features", str(w.pickle), "--format", "dialoguernn",
                                                 "--corpus", "meld", "--out", str(out)],
              output=lambda out: out / "prepared" / "meld"),
        Stage("import-features/features", lambda w, out: ["import-features", str(w.pickle), "--format",
                                                          "dialoguernn", "--corpus", "meld", "--out", str(out)],
              output=lambda out: out / "features" / "meld"),
    )
}


def _hold(stage: Stage, out: Path) -> OutputLock:
    """Take the lock `stage` takes on `out`, as another run would."""
    lock = OutputLock(stage.lock(out), stage.output(out), "test holder", remove=not stage.inside)
    lock.acquire()
    return lock


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("name", list(STAGES))
def test_a_second_run_refuses_at_once_naming_the_lock_and_wait(world, name, tmp_path, capsys):
    stage = STAGES[name]
    out = tmp_path / "out" / "meld"
    lock = _hold(stage, out)
    try:
        before = _listing(tmp_path)
        start = time.monotonic()
        code, _, err = run_cli(stage.argv(world, out), capsys)
        command = stage.argv(world, out)[0]
        line = assert_one_line_error(code, err, command, str(lock.path), "--wait SECONDS",
                                     "another process is")
        assert "wait_s" not in line, line  # the flag, not an internal argument name
        assert time.monotonic() - start < 30
        assert _listing(tmp_path) == before, "the refused run wrote something"
    finally:
        lock.release()
    if not stage.inside:
        assert not lock.path.exists()  # the holder removed its lock file


@pytest.mark.parametrize("name", [n for n in STAGES if n != "import-features/features"])
def test_with_wait_a_second_run_waits_for_the_holder_then_succeeds(world, name, tmp_path, capsys):
    stage = STAGES[name]
    out = tmp_path / "out" / "meld"
    lock = _hold(stage, out)
    timer = threading.Timer(HOLD_S, lock.release)
    timer.start()
    try:
        start = time.monotonic()
        code, _, err = run_cli([*stage.argv(world, out), "--wait", WAIT_S], capsys)
        waited = time.monotonic() - start
    finally:
        timer.cancel()
        lock.release()
    assert code == 0, err
    assert waited >= HOLD_S * 0.9, f"did not wait for the holder ({waited:.2f} s)"
    assert stage.output(out).is_dir()
    if not stage.inside:
        assert not stage.lock(out).exists(), "the run left its lock file beside the output"


def test_a_wait_shorter_than_the_hold_refuses_naming_the_wait(world, tmp_path, capsys):
    stage = STAGES["report"]
    out = tmp_path / "out" / "meld"
    lock = _hold(stage, out)
    try:
        start = time.monotonic()
        code, _, err = run_cli([*stage.argv(world, out), "--wait", "0.3"], capsys)
        waited = time.monotonic() - start
    finally:
        lock.release()
    assert_one_line_error(code, err, "report", str(lock.path), "after waiting 0.3 s", "longer --wait SECONDS")
    assert waited >= 0.3
    assert not out.exists()


def test_a_negative_wait_is_one_line_naming_the_flag(world, tmp_path, capsys):
    stage = STAGES["report"]
    code, _, err = run_cli([*stage.argv(world, tmp_path / "out"), "--wait", "-1"], capsys)
    assert_one_line_error(code, err, "report", "--wait must be a number of seconds >= 0")


KILLED_HOLDER = """
import sys, time
from pathlib import Path
from pipeline.core.locks import OutputLock
lock = OutputLock(Path(sys.argv[1]), Path(sys.argv[2]), "killed holder", remove=sys.argv[3] == "remove")
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("name", ["prepare", "train", "evaluate", "report", "import-features", "extract",
                                  "demo-corpus"])
def test_a_lock_whose_holder_was_killed_is_free(world, name, tmp_path, capsys):
    stage = STAGES[name]
    out = tmp_path / "out" / "meld"
    path = stage.lock(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", KILLED_HOLDER, str(path), str(stage.output(out)), "keep" if stage.inside else "remove"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(stage.argv(world, out), capsys)  # held: refused
        assert_one_line_error(code, err, stage.argv(world, out)[0], str(path), "--wait")
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=60) == -signal.SIGKILL
    finally:
        holder.kill()
        holder.wait()
    assert path.exists(), "the killed holder's lock file is left behind"
    code, _, err = run_cli(stage.argv(world, out), capsys)  # --wait 0: a dead holder's lock is free at once
    assert code == 0, err
    assert stage.output(out).is_dir()
    if not stage.inside:
        assert not path.exists(), "the run did not remove the leftover lock file"


def test_lock_file_names_do_not_clash_with_temporary_and_old_folders(tmp_path):
    """atomic_output_dir's `.<name>.<random>.tmp` and `.<name>.old`, and the marker, are other names."""
    from pipeline.core.outputs import MARKER_FILE

    out = tmp_path / "meld"
    assert lock_path(out) == tmp_path / ".meld.lock"
    assert lock_path(out).name not in {f".{out.name}.old", MARKER_FILE}
    assert not lock_path(out).name.endswith(".tmp")


def test_the_lock_survives_a_waiter_and_the_holder_removing_the_file(tmp_path):
    """A waiter that got the lock on a file the holder removed on release takes the current one."""
    out = tmp_path / "meld"
    first = OutputLock(lock_path(out), out, "output")
    first.acquire()
    second = OutputLock(lock_path(out), out, "output")
    got = threading.Event()

    def wait() -> None:
        second.acquire(30)
        got.set()

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    assert not got.is_set()
    first.release()  # removes the file the waiter has open
    thread.join(30)
    assert got.is_set() and second.held
    assert lock_path(out).exists()  # the waiter holds the file now at the path, not the removed one
    third = OutputLock(lock_path(out), out, "output")
    with pytest.raises(Exception, match="another process is writing this output"):
        third.acquire()
    second.release()
    assert not lock_path(out).exists()
    third.acquire()
    third.release()
