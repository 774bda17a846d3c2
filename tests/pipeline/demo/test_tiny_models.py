"""tiny_models: offline stand-in checkpoints load by path like downloaded ones, and are deterministic."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoFeatureExtractor, AutoModel, AutoTokenizer

from extractors.base import weights_sha256
from pipeline.demo import tiny_models
from pipeline.demo.tiny_models import (
    FACENET_FILE,
    ROBERTA_DIR,
    WAV2VEC2_DIR,
    build_all,
    build_tiny_wav2vec2,
)
from pipeline.core.fingerprint import sha256_file
from pipeline.core.outputs import MARKER_FILE, read_marker

SENTENCES = [
    "I don't know, she's SO angry!! Isn't it?",
    "Oh my God, you're pregnant?! That's amazing.",
    "We'll see... I can't believe they've left.",
    "  two  spaces,\ta tab and a newline\n",
    "Rachel's café in Zürich 😊",  # not ASCII: byte-level BPE still round-trips it
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub: offline mode set, and any network connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny"), seed=0)


def load_model(path: Path) -> torch.nn.Module:
    """AutoModel.from_pretrained, failing on any weight that was not in the checkpoint or not used."""
    model, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert {key: value for key, value in info.items() if value} == {}
    return model.eval()


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_all_writes_the_three_checkpoints_and_nothing_else(built: dict[str, Path]) -> None:
    root = built["text"].parent
    assert built == {"text": root / ROBERTA_DIR, "audio": root / WAV2VEC2_DIR, "face": root / FACENET_FILE}
    # each folder carries the marker of the stage that wrote it (pipeline/core/outputs.py)
    assert sorted(p.name for p in root.iterdir()) == sorted([MARKER_FILE, ROBERTA_DIR, WAV2VEC2_DIR, FACENET_FILE])
    assert sorted(p.name for p in built["text"].iterdir()) == [
        MARKER_FILE, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip
    assert sorted(p.name for p in built["audio"].iterdir()) == [
        MARKER_FILE, "config.json", "model.safetensors", "preprocessor_config.json"
    ]  # fmt: skip
    assert {read_marker(folder) for folder in (root, built["text"], built["audio"])} == {"tiny-models"}


def test_tokenizer_uses_robertas_special_token_ids(built: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built["text"])
    assert type(tokenizer).__name__ == "RobertaTokenizer"
    assert (tokenizer.bos_token_id, tokenizer.cls_token_id) == (0, 0)
    assert tokenizer.pad_token_id == 1
    assert (tokenizer.eos_token_id, tokenizer.sep_token_id) == (2, 2)
    assert tokenizer.unk_token_id == 3
    assert tokenizer.mask_token_id == 4
    assert 1000 <= len(tokenizer) <= 2000


@pytest.mark.parametrize("text", SENTENCES)
def test_tokenizer_round_trips_text(built: dict[str, Path], text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built["text"])
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_learned_the_corpus_words(built: dict[str, Path]) -> None:
    """Trained merges, not just bytes: common words are single tokens."""
    tokenizer = AutoTokenizer.from_pretrained(built["text"])
    assert tokenizer.tokenize(" frustrated happy") == ["Ġfrustrated", "Ġhappy"]


def test_roberta_padding_does_not_change_the_other_sequences(built: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built["text"])
    model = load_model(built["text"])
    short, long = "I'm happy.", "Honestly, I'm really frustrated about the wedding and the money."
    batch = tokenizer([short, long], padding=True, return_tensors="pt")
    with torch.no_grad():
        together = model(**batch).last_hidden_state
        alone = model(**tokenizer([short], return_tensors="pt")).last_hidden_state
    n_short = int(batch["attention_mask"][0].sum())
    assert n_short < batch["input_ids"].shape[1]  # the short one really is padded
    assert together.shape == (2, batch["input_ids"].shape[1], 64)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(together[0, :n_short], alone[0], rtol=1e-5, atol=1e-5)


def test_roberta_accepts_the_longest_truncated_input(built: dict[str, Path]) -> None:
    """max_position_embeddings covers model_max_length plus RoBERTa's padding_idx offset."""
    tokenizer = AutoTokenizer.from_pretrained(built["text"])
    model = load_model(built["text"])
    batch = tokenizer(" ".join(["happy"] * 500), truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape == (1, tokenizer.model_max_length) == (1, 128)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).last_hidden_state).all()


def test_wav2vec2_gives_20ms_frames_for_16khz_audio(built: dict[str, Path]) -> None:
    extractor = AutoFeatureExtractor.from_pretrained(built["audio"])
    model = load_model(built["audio"])  # includes the weight-norm positional conv's parametrized keys
    assert type(model).__name__ == "Wav2Vec2Model"
    assert extractor.sampling_rate == 16000
    assert extractor.do_normalize and extractor.return_attention_mask
    t = torch.arange(16000) / 16000
    audio = (0.3 * torch.sin(2 * torch.pi * 220 * t)).numpy()
    inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
    assert inputs["input_values"].shape == (1, 16000)
    assert abs(float(inputs["input_values"].std()) - 1) < 1e-2  # do_normalize: zero mean, unit variance
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (1, 49, 64)  # as facebook/wav2vec2-base: 1 s -> 49 frames
    assert torch.isfinite(hidden).all()


def test_facenet_weights_load_strictly_and_embed_160px_faces(built: dict[str, Path]) -> None:
    # importable only after tiny_models registered torchvision's fallback ops (CPU-only torch)
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    model.load_state_dict(load_file(built["face"]), strict=True)
    faces = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        embeddings = model.eval()(faces)
    assert embeddings.shape == (2, 512)
    assert torch.isfinite(embeddings).all()
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))


def test_same_seed_gives_identical_bytes_and_another_seed_other_weights(
    built: dict[str, Path], tmp_path: Path
) -> None:
    again = build_all(tmp_path / "again", seed=0)
    other = build_all(tmp_path / "other", seed=1)
    assert tree_bytes(again["text"].parent) == tree_bytes(built["text"].parent)
    for kind in ("text", "audio", "face"):
        assert weights_sha256(other[kind]) != weights_sha256(built[kind])
    # the tokenizer is trained, not seeded: it is the same for every seed
    assert (other["text"] / "tokenizer.json").read_bytes() == (built["text"] / "tokenizer.json").read_bytes()


def test_weights_sha256_tracks_weights_only(built: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in tree_bytes(built["audio"]).items():
        (folder / name).write_bytes(data)
    before = weights_sha256(folder)
    assert before == weights_sha256(built["audio"])

    (folder / "config.json").write_text("{}")
    assert weights_sha256(folder) == before  # not a weights file

    state = load_file(folder / "model.safetensors")
    name = sorted(state)[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 1e-3
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    assert weights_sha256(folder) != before

    assert weights_sha256(built["face"]) == sha256_file(built["face"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_sha256(empty)


def test_building_leaves_the_callers_torch_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_wav2vec2(tmp_path / "w2v", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_failed_build_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = build_tiny_wav2vec2(tmp_path / "w2v", seed=0)
    previous = tree_bytes(target)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(tiny_models.Wav2Vec2Model, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        build_tiny_wav2vec2(target, seed=1)
    assert tree_bytes(target) == previous
    assert [p.name for p in tmp_path.iterdir()] == ["w2v"]  # no temporary folder left behind
