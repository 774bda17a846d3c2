"""Process faults, through the real `mer` CLI in subprocesses: kill -9, a full disk, two runs on one output.

Every fault must end in one of two states: the stage's output is whole and byte-identical to an
uninterrupted run's (after a rerun, which resumes), or it is visibly unfinished (no index.json, no
metrics.json) with nothing a later stage could read as valid. And no utterance may disappear: each
manifest utterance is stored or reported missing with a reason; training scores every dev/test one.

Timing is controlled, not guessed: runs are killed when a polled file shows they are mid-way, and the
lock tests freeze the lock holder with SIGSTOP (found through /proc/locks) so the second run meets a
held lock whatever the machine's load.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.corpora.meld import RELEASE_DIR as MELD_RELEASE_DIR
from pipeline.formats.feature_store import (
    AVAILABILITY_FILE, INDEX_FILE, REPORT_FILE, FeatureStoreReader, _read_store_header,
)
from pipeline.formats.manifest import MANIFEST_FILE, read_manifest
from pipeline.formats.run_files import BEST_DIR, CHECKPOINT_JSON, LAST_DIR, METRICS_FILE, TRAIN_STATE

pytestmark = pytest.mark.faults

MER = [sys.executable, "-m", "pipeline.cli"]
# one intra-op thread: deterministic and fastest for these tiny models on a shared machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TIMEOUT_S = 240  # per subprocess / polling loop: a failure must not hang CI
SHARD_SIZE = 4  # MELD demo: 123 utterances -> 31 shards, a wide window to interrupt
TRAIN_EPOCHS = 5


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def run_mer(*args: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MER, *args], capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S, preexec_fn=preexec_fn
    )


def start_mer(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*MER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, out, err


def kill_all(*processes: subprocess.Popen) -> None:
    """Cleanup after a failed assertion: no run of ours is left behind, stopped or not."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def poll_until(condition: Callable[[], object], what: str, processes: tuple[subprocess.Popen, ...] = ()) -> object:
    """Wait (bounded) until `condition()` is truthy and return it; fail if time runs out or every run ended."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if processes and all(p.poll() is not None for p in processes):
            value = condition()
            if value:
                return value
            pytest.fail(f"every run ended before {what}: exit codes {[p.returncode for p in processes]}")
        time.sleep(0.002)
    pytest.fail(f"timed out after {TIMEOUT_S} s waiting for {what}")


def store_files(folder: Path) -> dict[str, bytes]:
    """Every file of a store except the (empty) lock file."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("shard-*.safetensors"))


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def assert_no_utterance_lost(store: Path, manifest_dir: Path) -> None:
    """Every manifest utterance is in index.json "utterances" or in report.json "missing" with a reason."""
    ids = [row["utterance_id"] for row in read_manifest(manifest_dir)]
    stored = set(json.loads((store / INDEX_FILE).read_text())["utterances"])
    report = json.loads((store / REPORT_FILE).read_text())
    missing = {m["utterance_id"]: m["reason"] for m in report["missing"]}
    assert stored | set(missing) == set(ids), "an utterance is neither stored nor reported missing"
    assert not stored & set(missing) and all(missing.values())
    assert report["counts"]["in"] == len(ids) == report["counts"]["out"] + report["counts"]["missing"]


def assert_unfinished_but_sound(store: Path, clean: dict[str, bytes]) -> None:
    """Not readable as a finished store, and every shard present is one the clean run wrote, byte for byte."""
    with pytest.raises(PipelineError, match="not a finished feature store"):
        FeatureStoreReader(store)
    for name in (INDEX_FILE, REPORT_FILE, AVAILABILITY_FILE):
        assert not (store / name).exists(), name
    for name in shard_files(store):
        assert _read_store_header(store / name) is not None, f"{name} does not open as a shard"
        assert (store / name).read_bytes() == clean[name], f"{name} differs from the clean run's"


def lock_holder(lock: Path, processes: tuple[subprocess.Popen, ...]) -> subprocess.Popen | None:
    """The run among `processes` that holds the flock on `lock` right now (from /proc/locks), if any."""
    try:
        inode = os.stat(lock).st_ino
        table = Path("/proc/locks").read_text()
    except FileNotFoundError:
        return None
    by_pid = {p.pid: p for p in processes}
    for line in table.splitlines():
        parts = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            pid = int(parts[4])
            if pid in by_pid:
                return by_pid[pid]
    return None


def stopped(process: subprocess.Popen) -> bool:
    """Whether `process` is stopped by a signal (state T in /proc/<pid>/stat)."""
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def has_open(process: subprocess.Popen, path: Path) -> bool:
    """Whether `process` has `path` open (a run waiting for the lock keeps .lock open while it polls)."""
    target = os.path.realpath(path)
    try:
        fds = os.listdir(f"/proc/{process.pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{process.pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


# ---------------------------------------------------------------------------------------------------
# extraction fixtures: the MELD demo manifest, the tiny text model, a clean CLI run as the reference
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meld(prepared_demo) -> Path:
    return prepared_demo["meld"]


@pytest.fixture(scope="module")
def text_params(tiny_models, tmp_path_factory) -> Path:
    params = tmp_path_factory.mktemp("fault-params") / "params.yaml"
    section = {"model": str(tiny_models["text"]), "layers": [-1], "context_window": 2, "batch_size": 4,
               "shard_size": SHARD_SIZE, "num_workers": 0}  # fmt: skip
    params.write_text(yaml.safe_dump({"extract": {"text": section}}))
    return params


def extract_args(meld: Path, out: Path, params: Path, *extra: str) -> list[str]:
    return ["extract", "text", "--manifest", str(meld), "--out", str(out), "--params", str(params), *extra]


@pytest.fixture(scope="module")
def clean_store(meld, text_params, tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted `mer extract` run: what every faulted run must end up equal to."""
    out = tmp_path_factory.mktemp("clean") / "store"
    result = run_mer(*extract_args(meld, out, text_params))
    assert result.returncode == 0, result.stderr
    assert len(shard_files(out)) == -(-len(read_manifest(meld)) // SHARD_SIZE) > 3
    assert_no_utterance_lost(out, meld)
    return store_files(out)


# ---------------------------------------------------------------------------------------------------
# 1. kill -9 during extraction
# ---------------------------------------------------------------------------------------------------


def test_extract_killed_with_sigkill_then_rerun_gives_the_clean_store(meld, text_params, clean_store, tmp_path):
    out = tmp_path / "store"
    args = extract_args(meld, out, text_params)
    process = start_mer(*args)
    try:
        poll_until(lambda: out.is_dir() and shard_files(out), "the first shard file", (process,))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)
    finally:
        kill_all(process)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    written = shard_files(out)
    assert written and len(written) < len([n for n in clean_store if n.startswith("shard-")])
    assert_unfinished_but_sound(out, clean_store)

    stamps = {name: (out / name).stat().st_mtime_ns for name in written}
    result = run_mer(*args)
    assert result.returncode == 0, result.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in written} == stamps, "finished shards were redone"
    assert store_files(out) == clean_store  # every file byte-identical, no temp file left behind
    assert FeatureStoreReader(out).utterance_ids
    assert_no_utterance_lost(out, meld)


# ---------------------------------------------------------------------------------------------------
# 3. disk full (a real file-size limit: writes fail with EFBIG)
# ---------------------------------------------------------------------------------------------------


def file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec: the write fails with EFBIG instead of SIGXFSZ killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("fails_at", ["first_shard", "finalize"])
def test_extract_on_a_full_disk_fails_in_one_line_and_leaves_nothing_readable(
    meld, text_params, clean_store, tmp_path, fails_at
):
    shard_sizes = [len(data) for name, data in clean_store.items() if name.startswith("shard-")]
    if fails_at == "first_shard":
        limit, failed_file = len(clean_store["shard-00000.safetensors"]) - 1, "shard-00000.safetensors"
    else:  # every shard fits, the first file finalize publishes does not
        limit, failed_file = max(shard_sizes), AVAILABILITY_FILE
        assert len(clean_store[AVAILABILITY_FILE]) > limit
    out = tmp_path / "store"
    args = extract_args(meld, out, text_params)
    result = run_mer(*args, preexec_fn=file_size_limit(limit))

    assert result.returncode == 2, (result.returncode, result.stderr)
    line = one_line_error(result.stderr)
    assert line.startswith("mer extract: error: ") and "write failed" in line, line
    assert str(out / failed_file) in line and "File too large" in line, line
    assert not temp_files(out), "a partial temporary file was left behind"
    assert_unfinished_but_sound(out, clean_store)
    assert len(shard_files(out)) == (0 if fails_at == "first_shard" else len(shard_sizes))

    rerun = run_mer(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert store_files(out) == clean_store
    assert_no_utterance_lost(out, meld)


def test_prepare_on_a_full_disk_fails_in_one_line_and_publishes_nothing(demo_corpus, meld, tmp_path):
    root, _ = demo_corpus
    out = tmp_path / "prepared" / "meld"
    args = ["prepare", "--corpus", "meld", "--root", str(root / MELD_RELEASE_DIR), "--out", str(out)]
    result = run_mer(*args, preexec_fn=file_size_limit(2048))

    assert result.returncode == 2, (result.returncode, result.stderr)
    line = one_line_error(result.stderr)
    assert line.startswith("mer prepare: error: ") and "write failed" in line and str(out) in line, line
    assert not out.exists(), "a partial prepared folder was published"
    # nothing left beside it: no temporary folder, no lock file (the folder the lock made is removed too)
    assert not out.parent.exists() or not [p.name for p in out.parent.iterdir()], "the temporary folder was left behind"

    rerun = run_mer(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / MANIFEST_FILE).read_bytes() == (meld / MANIFEST_FILE).read_bytes()


# ---------------------------------------------------------------------------------------------------
# 4. two extraction runs on the same --out
# ---------------------------------------------------------------------------------------------------


def test_second_extract_on_a_busy_store_refuses_in_one_line_and_changes_nothing(
    meld, text_params, clean_store, tmp_path
):
    out = tmp_path / "store"
    runs = (start_mer(*extract_args(meld, out, text_params)), start_mer(*extract_args(meld, out, text_params)))
    try:
        holder = poll_until(lambda: lock_holder(out / ".lock", runs), "a run to take the store's lock", runs)
        holder.send_signal(signal.SIGSTOP)  # frozen while holding the lock: the other run must meet it
        poll_until(lambda: stopped(holder), "the lock holder to stop")
        snapshot = store_files(out)
        other = runs[1] if holder is runs[0] else runs[0]
        code, _, err = finish(other)
        assert code == 2, (code, err)
        line = one_line_error(err)
        assert "another process is writing this feature store" in line and str(out / ".lock") in line, line
        assert store_files(out) == snapshot, "the refused run changed the store"
        holder.send_signal(signal.SIGCONT)
        code, _, err = finish(holder)
    finally:
        for process in runs:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
        kill_all(*runs)
    assert code == 0, err
    assert store_files(out) == clean_store
    assert_no_utterance_lost(out, meld)


def test_second_extract_with_wait_waits_for_the_first_and_the_store_is_whole(
    meld, text_params, clean_store, tmp_path
):
    out = tmp_path / "store"
    args = extract_args(meld, out, text_params, "--wait", str(TIMEOUT_S))
    runs = (start_mer(*args), start_mer(*args))
    try:
        holder = poll_until(lambda: lock_holder(out / ".lock", runs), "a run to take the store's lock", runs)
        holder.send_signal(signal.SIGSTOP)
        poll_until(lambda: stopped(holder), "the lock holder to stop")
        other = runs[1] if holder is runs[0] else runs[0]
        poll_until(lambda: has_open(other, out / ".lock"), "the second run to reach the lock", (other,))
        time.sleep(0.5)  # well past the first flock attempt: a run that did not wait would have exited
        assert other.poll() is None, f"the second run did not wait: {other.communicate()}"
        assert lock_holder(out / ".lock", runs) is holder  # still the frozen run's lock
        holder.send_signal(signal.SIGCONT)
        results = {p.pid: finish(p) for p in runs}
    finally:
        for process in runs:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
        kill_all(*runs)
    for code, _, err in results.values():
        assert code == 0, err
    # both report the same whole store; the waiter found every shard done
    assert results[holder.pid][1] == results[other.pid][1]
    assert store_files(out) == clean_store
    assert_no_utterance_lost(out, meld)


# ---------------------------------------------------------------------------------------------------
# 2. kill -9 during training
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic corpus with real feature stores (tests/train_fixture.py) and a few-epoch params file."""
    from tests.helpers.train_corpus import make_corpus

    root = tmp_path_factory.mktemp("train-corpus")
    prepared, features = make_corpus(root, dialogues={"train": 12, "dev": 5, "test": 5})
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {
        "seed": 0, "epochs": TRAIN_EPOCHS, "lr": 0.003, "batch_size": 4, "patience": 0,
        "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.1},
    }}))  # fmt: skip
    return {"prepared": prepared, "features": features, "params": params}


def train_args(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["train", "--corpus", "meld", "--prepared", str(inputs["prepared"]), "--features",
            str(inputs["features"]), "--out", str(out), "--params", str(inputs["params"]), "--cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(train_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    result = run_mer(*train_args(train_inputs, out))
    assert result.returncode == 0, result.stderr
    return out


# the run's files by path, ours (pipeline.training.checkpoint, METRICS_FILE) beside accelerate's and dvclive's
COMPARED = ("best/model.safetensors", "best/checkpoint.json", "last/model.safetensors", "last/optimizer.bin",
            "last/scheduler.bin", "last/trainer_state.json", "metrics.json", "dvclive/metrics.json")  # fmt: skip


def epochs_done(out: Path) -> int:
    try:
        return json.loads((out / LAST_DIR / TRAIN_STATE).read_text())["epochs_done"]
    except (FileNotFoundError, ValueError):  # not written yet, or `last` is being replaced right now
        return 0


def assert_resumed_to_the_straight_run(out: Path, straight: Path, inputs: dict[str, Path], after: int) -> None:
    result = run_mer(*train_args(inputs, out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"resuming from {out / 'last'} after epoch {after}" in lines, result.stdout
    ran = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("epoch ")]
    assert ran == list(range(after + 1, TRAIN_EPOCHS + 1)), result.stdout  # not from epoch 1
    for name in COMPARED:
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    history = json.loads((out / LAST_DIR / TRAIN_STATE).read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, TRAIN_EPOCHS + 1))
    # every dev and test utterance is scored
    rows = read_manifest(inputs["prepared"])
    record = json.loads((out / BEST_DIR / CHECKPOINT_JSON).read_text())
    for split in ("dev", "test"):
        assert record[split]["counts"]["utterances"] == sum(r["split"] == split for r in rows), split


def test_train_killed_with_sigkill_resumes_from_the_last_epoch_to_the_straight_run(
    train_inputs, straight_run, tmp_path
):
    out = tmp_path / "run"
    process = start_mer(*train_args(train_inputs, out))
    try:
        poll_until(lambda: epochs_done(out) >= 1, "the first epoch's saved state", (process,))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT_S)
    finally:
        kill_all(process)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / METRICS_FILE).exists()
    done = epochs_done(out) or json.loads((out / ".last.old" / TRAIN_STATE).read_text())["epochs_done"]
    assert 1 <= done < TRAIN_EPOCHS
    assert_resumed_to_the_straight_run(out, straight_run, train_inputs, after=done)


KILL_BETWEEN_RENAMES = """
import os, signal, sys
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    if os.path.basename(dst) == ".last.old":  # `last` moved aside, its successor not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_train_killed_while_replacing_its_last_state_resumes_from_the_previous_one(
    train_inputs, straight_run, tmp_path
):
    """The worst moment for a kill: `last` renamed away, the new state not yet renamed in (epoch 2's save)."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_RENAMES, *train_args(train_inputs, out)],
        capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (out / LAST_DIR).exists() and (out / ".last.old" / TRAIN_STATE).is_file()
    assert json.loads((out / ".last.old" / TRAIN_STATE).read_text())["epochs_done"] == 1
    assert_resumed_to_the_straight_run(out, straight_run, train_inputs, after=1)
    assert not (out / ".last.old").exists()
