"""`mer import-features` on small pickles written in exactly the published tuple layouts.

The real feature pickles cannot be fetched here, so each test writes a few dialogues in the same
structure: dicts keyed by dialogue id, one list / array per dialogue with one entry per utterance,
IEMOCAP ids as strings with 'M'/'F' speakers (written as a Python-2 pickle, protocol 2 with
Python-2 `str` opcodes and `numpy.core` globals), MELD ids as integers with one-hot speakers.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.stages.import_features as importer
from pipeline.cli import main
from pipeline.core.errors import PipelineError
from pipeline.formats.feature_store import FeatureStoreReader, FeatureStoreWriter
from pipeline.stages.import_features import LABEL_NAMES, LAYOUTS, Layout, carve_dev, import_features
from pipeline.formats.manifest import MANIFEST_FILE, SUMMARY_FILE, manifest_metadata, raw_root_of, read_manifest

DIMS = {"text": 6, "audio": 5, "visual": 3}
LAYOUT = {layout.name: layout for layout in LAYOUTS}


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2 wrote: str and numpy buffers as py2 `str` opcodes, numpy as `numpy.core`.

    Such a file fails to load in Python 3 without encoding="latin1" (see the first test).
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def _py2_str(self, data: bytes, obj) -> None:
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_bytes(self, obj: bytes) -> None:
        self._py2_str(obj, obj)

    def save_str(self, obj: str) -> None:
        self._py2_str(obj.encode("latin-1"), obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str

    def save_global(self, obj, name=None) -> None:
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _dump(obj, path: Path, py2: bool) -> Path:
    if py2:
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def build_items(layout: Layout, n_train: int = 10, n_test: int = 3, seed: int = 0) -> dict:
    """Every item of `layout`, by name, for a small random corpus in the published structure."""
    rng = np.random.default_rng(seed)
    corpus = layout.corpus
    if corpus == "iemocap":
        keys = [f"Ses0{1 + j // 4}{'FM'[j % 2]}_impro0{j}" for j in range(n_train)]
        keys += [f"Ses05{'FM'[j % 2]}_script0{j}_1" for j in range(n_test)]
    else:
        keys = list(range(n_train + n_test))
    items: dict = {name: {} for name in layout.per_utterance_fields}
    for d, key in enumerate(keys):
        n = 2 + d % 3
        if "videoIDs" in items:
            items["videoIDs"][key] = [f"{key}_F00{i}" for i in range(n)] if corpus == "iemocap" else list(range(n))
        if corpus == "iemocap":
            items["videoSpeakers"][key] = ["MF"[(d + i) % 2] for i in range(n)]
        else:
            items["videoSpeakers"][key] = [[1.0 if s == (d + i) % 9 else 0.0 for s in range(9)] for i in range(n)]
        items["videoLabels"][key] = [int(x) for x in rng.integers(0, len(LABEL_NAMES[corpus]), n)]
        items["videoSentence"][key] = [f"utterance {i} of dialogue {key}" for i in range(n)]
        for field in layout.per_utterance_fields:
            if field in ("videoText", "roberta1", "roberta2", "roberta3", "roberta4"):
                items[field][key] = rng.standard_normal((n, DIMS["text"])).astype(np.float32)  # one [n, D] array
            elif field == "videoAudio":  # python floats (float64): float32 is what the loaders feed the model
                items[field][key] = [list(rng.standard_normal(DIMS["audio"]) * 100) for _ in range(n)]
            elif field == "videoVisual":
                items[field][key] = [rng.standard_normal(DIMS["visual"]).astype(np.float32) for _ in range(n)]
            elif field == "videoSentiments":
                items[field][key] = [int(x) for x in rng.integers(0, 3, n)]
    train, test = keys[:n_train], keys[n_train:]
    items["trainVid"] = set(train) if corpus == "iemocap" else list(train)
    items["testVid"] = set(test) if corpus == "iemocap" else list(test)
    items["_"] = {k: "unused" for k in keys}
    return items


def write_pickle(layout: Layout, items: dict, path: Path) -> Path:
    obj = tuple(items[name] for name in layout.fields)
    return _dump(obj, path, py2=layout.corpus == "iemocap")


def _expected_split(items: dict, fraction: float, seed: int) -> dict[str, str]:
    ordered = sorted(items["trainVid"])
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    dev = set(shuffled[: int(fraction * len(ordered))])
    split = {str(k): ("dev" if k in dev else "train") for k in ordered}
    split.update({str(k): "test" for k in items["testVid"]})
    return split


def _store(out: Path, corpus: str, modality: str) -> FeatureStoreReader:
    return FeatureStoreReader(out / "features" / corpus / modality)


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_round_trip_keeps_every_value_label_speaker_text_and_split(tmp_path, name):
    layout = LAYOUT[name]
    items = build_items(layout)
    path = write_pickle(layout, items, tmp_path / f"{name}.pkl")
    out = tmp_path / "out"
    summary = import_features(path, layout.format, layout.corpus, out, dev_fraction=0.2, seed=3, text_layers=None)

    rows = read_manifest(out / "prepared" / layout.corpus)
    total = sum(len(v) for v in items["videoLabels"].values())
    assert len(rows) == total == summary["counts"]["utterances_out"]
    split_of = _expected_split(items, 0.2, 3)
    keys = {str(k): k for k in items["videoLabels"]}
    labels = LABEL_NAMES[layout.corpus]
    for row in rows:
        key, i = keys[row["dialogue_id"]], row["turn_index"]
        assert row["utterance_id"] == f"{row['dialogue_id']}_{i}"
        assert row["split"] == split_of[row["dialogue_id"]]
        assert row["label_index"] == items["videoLabels"][key][i] and row["label"] == labels[row["label_index"]]
        assert row["text"] == items["videoSentence"][key][i]
        assert row["attributes"]["pickle_id"] == items["videoIDs"][key][i]
        speaker = items["videoSpeakers"][key][i]
        assert row["speaker"] == (speaker if layout.corpus == "iemocap" else str(int(np.argmax(speaker))))
        if "videoSentiments" in items:
            assert row["attributes"]["sentiment_index"] == items["videoSentiments"][key][i]
        assert row["audio_path"] is None and row["video_path"] is None and row["flags"] == []
        assert row["has_text"] and row["has_audio"] and row["has_video"] == ("videoVisual" in items)

    # dev carved out of trainVid: disjoint from test, train + dev = trainVid
    by_split = {s: {r["dialogue_id"] for r in rows if r["split"] == s} for s in ("train", "dev", "test")}
    assert by_split["train"] | by_split["dev"] == {str(k) for k in items["trainVid"]}
    assert not by_split["train"] & by_split["dev"] and not by_split["dev"] & by_split["test"]
    assert len(by_split["dev"]) == int(0.2 * len(items["trainVid"])) == 2
    assert by_split["test"] == {str(k) for k in items["testVid"]}

    # every stored value is the pickle's, as float32, exactly
    text_field = "videoText" if layout.format == "dialoguernn" else None
    for modality, field in (("text", text_field), ("audio", "videoAudio"), ("face", "videoVisual")):
        if field is None:
            continue
        folder = out / "features" / layout.corpus / modality
        if field not in items:
            assert not folder.exists()
            continue
        store = _store(out, layout.corpus, modality)
        assert store.utterance_ids == [r["utterance_id"] for r in rows]  # manifest order
        stored = store.load_all()
        for row in rows:
            want = np.asarray(items[field][keys[row["dialogue_id"]]][row["turn_index"]], dtype=np.float32)
            assert torch.equal(stored[row["utterance_id"]], torch.from_numpy(want))

    meta = manifest_metadata(out / "prepared" / layout.corpus)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["corpus"] == layout.corpus and meta["label_policy"] == f"imported-{layout.format}"
    assert json.loads(meta["label_map"]) == {n: i for i, n in enumerate(labels)}
    prepared = out / "prepared" / layout.corpus
    assert raw_root_of(prepared, meta).resolve() == path.resolve() and meta["raw_tree_sha256"] == sha
    store_meta = _store(out, layout.corpus, "audio").metadata
    assert store_meta["extractor"] == f"import:{layout.format}" and store_meta["model_id"] == path.name
    assert store_meta["model_sha256"] == sha and store_meta["dtype"] == "float32"
    assert store_meta["manifest_sha256"] == hashlib.sha256(
        (out / "prepared" / layout.corpus / MANIFEST_FILE).read_bytes()
    ).hexdigest()
    assert store_meta["params"]["layout"] == name
    assert not _hidden_entries(out)  # no temp folder left


def test_iemocap_fixture_is_a_python2_pickle_that_needs_latin1(tmp_path):
    layout = LAYOUT["dialoguernn-iemocap-9"]
    items = build_items(layout, n_train=2, n_test=1)
    first = sorted(items["videoSentence"])[0]
    items["videoSentence"][first][0] = "caf\xe9"  # a py2 str byte beyond ASCII
    path = write_pickle(layout, items, tmp_path / "IEMOCAP_features.pkl")
    with open(path, "rb") as handle, pytest.raises(UnicodeDecodeError):
        pickle.load(handle)  # what a Python-3 default load does with a Python-2 file
    import_features(path, "dialoguernn", "iemocap", tmp_path / "out", dev_fraction=0.0)
    rows = read_manifest(tmp_path / "out" / "prepared" / "iemocap")
    assert next(r["text"] for r in rows if r["utterance_id"] == f"{first}_0") == "caf\xe9"
    assert {r["split"] for r in rows} == {"train", "test"}


@pytest.mark.parametrize("mode", ["mean", "concat", "last", None])
def test_text_layers_of_the_four_roberta_layers(tmp_path, mode):
    layout = LAYOUT["sdt-iemocap-12"]
    items = build_items(layout, n_train=3, n_test=1)
    path = write_pickle(layout, items, tmp_path / "iemocap_multimodal_features.pkl")
    summary = import_features(path, "sdt", "iemocap", tmp_path / "out", text_layers=mode)
    stored = _store(tmp_path / "out", "iemocap", "text").load_all()
    key = sorted(items["trainVid"])[1]
    r1, r2, r3, r4 = (items[f"roberta{k}"][key][1] for k in (1, 2, 3, 4))
    want = {
        "mean": (((r1 + r2) + r3) + r4) / np.float32(4),
        None: (((r1 + r2) + r3) + r4) / np.float32(4),
        "concat": np.concatenate([r1, r2, r3, r4]),
        "last": r1,  # roberta1 = feat[-1]: COSMIC's last hidden layer
    }[mode]
    assert torch.equal(stored[f"{key}_1"], torch.from_numpy(want))
    assert summary["import"]["text_layers"] == (mode or "mean")
    assert summary["import"]["modalities"]["text"]["dim"] == [24 if mode == "concat" else 6]


def test_dev_carving_is_deterministic_and_follows_the_seed(tmp_path):
    layout = LAYOUT["dialoguernn-meld-10"]
    items = build_items(layout, n_train=20, n_test=2)
    path = write_pickle(layout, items, tmp_path / "MELD_features_raw1.pkl")

    def dev_of(out: str, seed: int) -> list[str]:
        import_features(path, "dialoguernn", "meld", tmp_path / out, dev_fraction=0.25, seed=seed)
        rows = read_manifest(tmp_path / out / "prepared" / "meld")
        return sorted({r["dialogue_id"] for r in rows if r["split"] == "dev"})

    first = dev_of("a", 0)
    assert len(first) == 5 and dev_of("b", 0) == first
    assert (tmp_path / "a/prepared/meld/manifest.parquet").read_bytes() == (
        tmp_path / "b/prepared/meld/manifest.parquet"
    ).read_bytes()
    assert any(dev_of(f"s{seed}", seed) != first for seed in (1, 2, 3))
    # the rule as written in summary.json: sorted ids (integers numerically), seeded shuffle, int(f * n)
    train, dev = carve_dev([10, 2, 1, 3], 0.5, seed=7)
    order = [1, 2, 3, 10]
    random.Random(7).shuffle(order)
    assert sorted(dev) == sorted(order[:2]) and sorted(train + dev) == [1, 2, 3, 10]
    summary = json.loads((tmp_path / "a/prepared/meld/summary.json").read_text())
    assert "random.Random(0)" in summary["split_rule"] and "int(0.25 * 20) = 5" in summary["split_rule"]


def test_nan_feature_is_stored_as_missing_with_its_reason(tmp_path):
    layout = LAYOUT["sdt-meld-13"]
    items = build_items(layout, n_train=4, n_test=1)
    items["videoAudio"][1][0][2] = float("nan")
    items["roberta3"][2][1, 0] = np.inf
    path = write_pickle(layout, items, tmp_path / "meld_multimodal_features.pkl")
    summary = import_features(path, "sdt", "meld", tmp_path / "out", dev_fraction=0.0)

    audio = _store(tmp_path / "out", "meld", "audio")
    assert "1_0" not in audio and "1_1" in audio
    assert audio.report["missing"] == [{"utterance_id": "1_0", "reason": "videoAudio vector has 1 NaN/inf of 5 values"}]
    availability = audio.availability()
    assert not availability.mask[availability.utterance_ids.index("1_0")]
    text = _store(tmp_path / "out", "meld", "text")
    assert "1_0" in text and "2_1" not in text
    assert text.report["missing"][0]["reason"] == "roberta3 vector has 1 NaN/inf of 6 values"
    rows = {r["utterance_id"]: r for r in read_manifest(tmp_path / "out" / "prepared" / "meld")}
    assert rows["1_0"]["flags"] == ["nonfinite_audio"] and not rows["1_0"]["has_audio"] and rows["1_0"]["has_text"]
    assert rows["2_1"]["flags"] == ["nonfinite_text"] and not rows["2_1"]["has_text"]
    assert summary["counts"]["flagged"] == 2
    assert summary["import"]["modalities"]["audio"]["splits"]["train"]["missing"] == 1


def test_out_of_range_labels_are_excluded_and_counted_in_the_summary(tmp_path):
    layout = LAYOUT["dialoguernn-meld-9"]
    items = build_items(layout, n_train=5, n_test=2)
    items["videoLabels"][1][1] = 7  # MELD has 7 classes: 0..6
    items["videoLabels"][6][0] = -1
    items["videoSpeakers"][3][0] = [0.0] * 9  # no speaker set
    path = write_pickle(layout, items, tmp_path / "MELD_features_raw.pkl")
    summary = import_features(path, "dialoguernn", "meld", tmp_path / "out", dev_fraction=0.2, seed=1)

    total = sum(len(v) for v in items["videoLabels"].values())
    assert summary["counts"] == {"utterances_seen": total, "utterances_out": total - 2, "excluded": 2, "flagged": 1}
    assert summary["exclusion_counts"] == {
        "label -1 outside the 7 classes 0..6": 1, "label 7 outside the 7 classes 0..6": 1,
    }
    assert {e["utterance_id"] for e in summary["excluded"]} == {"1_1", "6_0"}
    rows = read_manifest(tmp_path / "out" / "prepared" / "meld")
    ids = {r["utterance_id"] for r in rows}
    assert "1_1" not in ids and {"1_0", "1_2"} <= ids and "1_1" not in _store(tmp_path / "out", "meld", "text")
    unknown = next(r for r in rows if r["utterance_id"] == "3_0")
    assert unknown["speaker"] == "unknown" and unknown["flags"] == ["speaker_not_one_hot"]
    # summary.json as written: per split counts, the pickle's identity, what was not used
    written = json.loads((tmp_path / "out/prepared/meld/summary.json").read_text())
    assert written["raw_tree_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert written["raw_files"] == 1 and written["label_policy"] == "imported-dialoguernn"
    splits = written["import"]["splits"]
    assert splits["test"] == {
        "dialogues": 2, "utterances_in": len(items["videoLabels"][5]) + len(items["videoLabels"][6]),
        "utterances_out": len(items["videoLabels"][5]) + len(items["videoLabels"][6]) - 1, "excluded": 1, "flagged": 0,
    }
    assert sum(s["utterances_in"] for s in splits.values()) == total
    assert sum(written["splits"][s]["utterances"] for s in written["splits"]) == total - 2
    assert written["splits"]["dev"]["dialogues"] == 1 and written["splits"]["train"]["dialogues"] == 4
    assert written["import"]["absent_modalities"] == ["face"]
    assert written["splits"]["train"]["modalities"]["video"] == 0


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def _broken(name: str, change) -> tuple[Layout, dict]:
    layout = LAYOUT[name]
    items = build_items(layout, n_train=4, n_test=2)
    change(items)
    return layout, items


def _set(mapping, key, value):
    mapping[key] = value


ERROR_CASES = {
    "length mismatch": (
        lambda: _broken("sdt-meld-14", lambda it: it["videoSentence"][2].pop()),
        "sdt", "meld", ["dialogue '2'", "differ in length", "videoSentence 3", "videoLabels 4"],
    ),
    "missing key": (
        lambda: _broken("dialoguernn-meld-10", lambda it: it["videoAudio"].pop(1)),
        "dialoguernn", "meld", ["dialogue '1'", "missing from videoAudio"],
    ),
    "dimension mismatch": (
        lambda: _broken("dialoguernn-iemocap-9", lambda it: _set(
            it["videoVisual"], "Ses01F_impro02", [np.zeros(4, np.float32)] * 4)),
        "dialoguernn", "iemocap", ["dialogue 'Ses01F_impro02'", "videoVisual vector has shape (4,)", "(3,)"],
    ),
    "dialogue in both splits": (
        lambda: _broken("dialoguernn-meld-9", lambda it: it["testVid"].append(0)),
        "dialoguernn", "meld", ["dialogue '0' is in both trainVid and testVid"],
    ),
    "wrong corpus": (
        lambda: _broken("dialoguernn-iemocap-9", lambda it: None),
        "dialoguernn", "meld", ["item 9 (videoSentiments) must be a dict", "--corpus right?"],
    ),
    "one-hot speakers in IEMOCAP": (
        lambda: _broken("sdt-iemocap-12", lambda it: _set(it["videoSpeakers"], "Ses01M_impro01", [[0, 1]] * 3)),
        "sdt", "iemocap", ["dialogue 'Ses01M_impro01', utterance 0", "is --corpus right?"],
    ),
    "wrong format": (
        lambda: _broken("sdt-iemocap-12", lambda it: None),
        "dialoguernn", "iemocap", ["a tuple of 12 items", "expected 9 items", "--format sdt --corpus iemocap"],
    ),
    "not a dict": (
        lambda: _broken("dialoguernn-meld-10", lambda it: _set(it, "videoText", [1, 2])),
        "dialoguernn", "meld", ["item 4 (videoText) must be a dict"],
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_pickles_are_one_line_errors_and_write_nothing(tmp_path, capsys, case):
    build, fmt, corpus, expected = ERROR_CASES[case]
    layout, items = build()
    path = write_pickle(layout, items, tmp_path / "features.pkl")
    out = tmp_path / "out"
    err = _error(capsys, ["import-features", str(path), "--format", fmt, "--corpus", corpus, "--out", str(out)])
    for text in expected:
        assert text in err
    assert not out.exists() or list(out.iterdir()) == []


def test_not_a_pickle_and_misused_options_are_one_line_errors(tmp_path, capsys):
    text = tmp_path / "features.pkl"
    text.write_text("videoIDs,videoSpeakers\n1,2\n")
    out = str(tmp_path / "out")
    err = _error(capsys, ["import-features", str(text), "--format", "sdt", "--corpus", "meld", "--out", out])
    assert "not a readable pickle" in err and str(text) in err
    _dump({"videoIDs": {}}, text, py2=False)
    err = _error(capsys, ["import-features", str(text), "--format", "sdt", "--corpus", "meld", "--out", out])
    assert "holds a dict, not the tuple" in err
    layout = LAYOUT["dialoguernn-meld-9"]
    write_pickle(layout, build_items(layout, 2, 1), text)
    err = _error(capsys, [
        "import-features", str(text), "--format", "dialoguernn", "--corpus", "meld", "--out", out,
        "--text-layers", "mean",
    ])
    assert "--format sdt only" in err
    with pytest.raises(PipelineError, match="dev-fraction"):
        import_features(text, "dialoguernn", "meld", out, dev_fraction=1.0)
    assert not (tmp_path / "out").exists()


def test_float16_option_and_overflow(tmp_path):
    layout = LAYOUT["dialoguernn-meld-10"]
    items = build_items(layout, n_train=3, n_test=1)
    items["videoAudio"][0][0][0] = 1e6  # beyond float16
    path = write_pickle(layout, items, tmp_path / "MELD_features_raw1.pkl")
    import_features(path, "dialoguernn", "meld", tmp_path / "out", dtype="float16")
    audio = _store(tmp_path / "out", "meld", "audio")
    assert audio.metadata["dtype"] == "float16" and "0_0" not in audio
    assert "overflows float16" in audio.report["missing"][0]["reason"]
    want = np.asarray(items["videoAudio"][0][1], dtype=np.float32).astype(np.float16)
    assert torch.equal(audio.get("0_1", dtype=torch.float16), torch.from_numpy(want))


def _fixture(name: str, path: Path) -> Path:
    return write_pickle(LAYOUT[name], build_items(LAYOUT[name]), path)


def test_reimport_replaces_an_earlier_import_but_never_prepare_output(tmp_path, capsys):
    out = tmp_path / "out"
    with_visual = _fixture("dialoguernn-meld-10", tmp_path / "a.pkl")
    no_visual = _fixture("dialoguernn-meld-9", tmp_path / "b.pkl")
    import_features(with_visual, "dialoguernn", "meld", out)
    assert (out / "features/meld/face/index.json").is_file()
    argv = ["import-features", str(no_visual), "--format", "dialoguernn", "--corpus", "meld", "--out", str(out)]
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "train 9 dialogues" not in report and "  dev: 1 dialogues" in report and "face: not in this layout" in report
    assert "audio [5] from videoAudio: stored train" in report
    assert not (out / "features/meld/face").exists()  # the earlier import was replaced whole
    assert raw_root_of(out / "prepared/meld", manifest_metadata(out / "prepared/meld")).resolve() == no_visual.resolve()
    assert sorted(p.name for p in out.iterdir()) == ["features", "prepared"] and not _hidden_entries(out)

    (out / "prepared/iemocap").mkdir(parents=True)  # e.g. made by `mer prepare`
    (out / "prepared/iemocap/summary.json").write_text("{}")
    iemocap = _fixture("dialoguernn-iemocap-9", tmp_path / "c.pkl")
    argv = ["import-features", str(iemocap), "--format", "dialoguernn", "--corpus", "iemocap", "--out", str(out)]
    err = _error(capsys, argv)
    assert "not the output of `mer import-features`" in err
    assert (out / "prepared/iemocap/summary.json").read_text() == "{}"


def _hidden_entries(out: Path) -> list[str]:
    """Temporary or set-aside folders left in out/, out/prepared/ or out/features/."""
    return sorted(str(p) for folder in (out, out / "prepared", out / "features") if folder.is_dir()
                  for p in folder.iterdir() if p.name.startswith("."))


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("when", ["between two stores", "after the stores"])
def test_a_failed_import_publishes_nothing_and_keeps_the_earlier_one(tmp_path, monkeypatch, when):
    out = tmp_path / "out"
    import_features(_fixture("dialoguernn-meld-10", tmp_path / "a.pkl"), "dialoguernn", "meld", out)
    before = _files(out)
    if when == "between two stores":  # the text store is finished, the audio one is not
        finalize, calls = FeatureStoreWriter.finalize, []

        def fail_second(writer):
            calls.append(writer)
            if len(calls) == 2:
                raise RuntimeError("killed mid-import")
            return finalize(writer)

        monkeypatch.setattr(FeatureStoreWriter, "finalize", fail_second)
    else:  # every store is written, summary.json is not

        def fail(*args, **kwargs):
            raise RuntimeError("killed mid-import")

        monkeypatch.setattr(importer, "write_summary_and_report", fail)
    with pytest.raises(RuntimeError, match="killed mid-import"):
        import_features(_fixture("dialoguernn-meld-9", tmp_path / "b.pkl"), "dialoguernn", "meld", out)
    assert _files(out) == before
    assert not _hidden_entries(out)


def test_a_prepare_output_that_appears_during_the_import_is_never_replaced(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    write_summary_and_report = importer.write_summary_and_report

    def prepare_meanwhile(folder, *args, **kwargs):
        write_summary_and_report(folder, *args, **kwargs)
        (out / "prepared/meld").mkdir(parents=True)  # `mer prepare --out out/prepared/meld` finished meanwhile
        (out / "prepared/meld" / SUMMARY_FILE).write_text("{}")

    monkeypatch.setattr(importer, "write_summary_and_report", prepare_meanwhile)
    path = _fixture("dialoguernn-meld-10", tmp_path / "a.pkl")
    argv = ["import-features", str(path), "--format", "dialoguernn", "--corpus", "meld", "--out", str(out)]
    err = _error(capsys, argv)
    assert "not the output of `mer import-features`" in err
    # nothing of the import was published, not even features/meld (renamed first when all goes well)
    assert _files(out) == {f"prepared/meld/{SUMMARY_FILE}": b"{}"}
    assert not _hidden_entries(out) and not (out / "features/meld").exists()
