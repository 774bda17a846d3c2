"""`hf_text` across model families: BERT, ELECTRA, DeBERTa-v2/v3, RoBERTa, XLM-R (encoders) and GPT-2,
Llama, Qwen2 (decoder-only LMs), each a tiny random checkpoint built offline
(tests/helpers/tiny_text_models.py) and loaded through the extractor's real `from_pretrained` path.

Batch and padding invariance are checked to TOLERANCE: a batch pads its items to one width, and
attention over a longer (masked) row sums in another order, so features may move in their last
float32 bits, never more.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from extractors.base import Decoded
from extractors.hf_text import FAMILIES, HFTextConfig, HFTextExtractor
from pipeline.core.errors import PipelineError
from tests.helpers import text_row as row
from tests.helpers.tiny_text_models import BUILDERS, MAX_TOKENS, build_deberta_v2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32 rounding from padding / batch composition
HIDDEN = 32
ENCODERS = ["bert", "electra", "deberta-v2", "deberta-v2-abs", "roberta", "xlm-roberta"]
DECODERS = ["gpt2", "llama", "qwen2"]
ALL = ENCODERS + DECODERS
LOWERCASE = {"bert", "electra"}  # their WordPiece tokenizers lowercase


DIALOGUE = [
    row("u1", 1, "Hey, how are you doing?", "Ross"),
    row("u2", 3, "I'm so happy about the wedding.", "Rachel"),
    row("u3", 5, "Why would you do that to me?", "Monica"),
    row("u4", 6, "No.", "Joey"),
    row("x1", 0, "Oh my God, what are you doing here? I can't believe it!", "Joey", dialogue="d2"),
]
TARGET = DIALOGUE[2]  # two turns of context before it


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Every family's tiny checkpoint, built once for the module."""
    root = tmp_path_factory.mktemp("text-families")
    built = {name: build(root / name) for name, build in BUILDERS.items()}
    built["deberta-v2-abs"] = build_deberta_v2(root / "deberta-v2-abs", position_biased_input=True)
    return built


def make(folders: dict[str, Path], family: str, **overrides) -> HFTextExtractor:
    config = HFTextConfig(model=str(folders[family]), num_workers=0, **{"layers": [-1], **overrides})
    extractor = HFTextExtractor(config, Path("."), torch.device("cpu"))
    extractor.plan(DIALOGUE)
    return extractor


def squash(text: str, family: str) -> str:
    """Text compared without spacing (tokenizers decode spaces differently) or case where lowercased."""
    text = "".join(text.split())
    return text.lower() if family in LOWERCASE else text


def target_text(extractor: HFTextExtractor, decoded: Decoded) -> str:
    ids = [i for i, keep in zip(decoded.data.input_ids, decoded.data.target_mask) if keep]
    return extractor.tokenizer.decode(ids)


def model_inputs(decoded: Decoded) -> dict[str, torch.Tensor]:
    """One unpadded example as the model takes it by default (its own position ids)."""
    inputs = {"input_ids": torch.tensor([decoded.data.input_ids])}
    if decoded.data.token_type_ids is not None:
        inputs["token_type_ids"] = torch.tensor([decoded.data.token_type_ids])
    return inputs


def test_the_families_table_is_what_these_tests_cover() -> None:
    assert set(FAMILIES) == set(BUILDERS)
    assert {name for name, family in FAMILIES.items() if family.causal} == set(DECODERS)


@pytest.mark.parametrize("family", ALL)
def test_each_family_gives_one_vector_per_utterance_with_the_target_marked(folders, family) -> None:
    extractor = make(folders, family, context_window=2)
    assert extractor.max_tokens == MAX_TOKENS  # RoBERTa / XLM-R: 66 positions, 2 before the first token
    decoded = [extractor.decoder()(r) for r in DIALOGUE]
    in_a_worker = pickle.loads(pickle.dumps(extractor.decoder()))  # DataLoader workers get a pickled copy
    assert [in_a_worker(r).data for r in DIALOGUE] == [d.data for d in decoded]
    target = decoded[2]
    assert squash(target_text(extractor, target), family) == squash(TARGET["text"], family)
    assert len(target.data.input_ids) > sum(target.data.target_mask) + 8  # the context is really there
    assert all(d.flags == [] for d in decoded)
    with torch.inference_mode():
        encoded = extractor.encode(decoded)
    assert [e.utterance_id for e in encoded] == [r["utterance_id"] for r in DIALOGUE]
    features = torch.stack([e.feature for e in encoded])
    assert features.shape == (len(DIALOGUE), HIDDEN) and torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])


@pytest.mark.parametrize("family", ALL)
def test_mean_pooling_is_the_mean_of_the_chosen_layers_over_the_target_tokens(folders, family) -> None:
    extractor = make(folders, family, context_window=2, layers=[0, -1])
    decoded = extractor.decoder()(TARGET)
    with torch.inference_mode():
        [encoded] = extractor.encode([decoded])
        hidden = extractor.model(**model_inputs(decoded), output_hidden_states=True).hidden_states
    mask = torch.tensor(decoded.data.target_mask)
    expected = ((hidden[0][0] + hidden[-1][0]) / 2)[mask].mean(0)
    torch.testing.assert_close(encoded.feature, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", [*DECODERS, "bert"])
def test_last_pooling_takes_the_target_s_last_token(folders, family) -> None:
    extractor = make(folders, family, context_window=2, pooling="last")
    decoded = extractor.decoder()(TARGET)
    last = max(i for i, keep in enumerate(decoded.data.target_mask) if keep)
    with torch.inference_mode():
        [encoded] = extractor.encode([decoded])
        hidden = extractor.model(**model_inputs(decoded), output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(encoded.feature, hidden[last], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(encoded.feature, hidden[last - 1])


@pytest.mark.parametrize("family", ALL)
def test_a_feature_does_not_depend_on_its_batch_or_the_padding_side(folders, family) -> None:
    for pooling in ["mean", "last"] if family in DECODERS else ["mean", "cls"]:
        extractor = make(folders, family, context_window=2, pooling=pooling, layers=[-2, -1])
        decoded = [extractor.decoder()(r) for r in DIALOGUE]
        assert len({len(d.data.input_ids) for d in decoded}) > 2  # the batch really pads
        by_side = {}
        for side in ("right", "left"):
            extractor.tokenizer.padding_side = side
            with torch.inference_mode():
                batched = torch.stack([e.feature for e in extractor.encode(decoded)])
                alone = torch.stack([extractor.encode([d])[0].feature for d in decoded])
            torch.testing.assert_close(batched, alone, **TOLERANCE)
            by_side[side] = batched
        torch.testing.assert_close(by_side["left"], by_side["right"], **TOLERANCE)


SEGMENTS_PASSED = [("bert", True), ("electra", True), ("deberta-v2-abs", True),
                   ("deberta-v2", False), ("roberta", False), ("gpt2", False)]  # fmt: skip


@pytest.mark.parametrize(("family", "passed"), SEGMENTS_PASSED)
def test_segment_ids_reach_the_models_that_embed_them(folders, family, passed) -> None:
    """BERT, ELECTRA and DeBERTa-v2 embed the segment (0 context, 1 target); DeBERTa-v3 (type_vocab_size
    0), RoBERTa and the LMs have no segments."""
    extractor = make(folders, family, context_window=2)
    decoded = extractor.decoder()(TARGET)
    seen: list[dict] = []
    extractor.model.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(kwargs), with_kwargs=True)
    with torch.inference_mode():
        [encoded] = extractor.encode([decoded])
    if not passed:
        assert "token_type_ids" not in seen[0] and decoded.data.token_type_ids is None
        return
    segments = seen[0]["token_type_ids"][0].tolist()
    assert segments == decoded.data.token_type_ids
    target_positions = [i for i, keep in enumerate(decoded.data.target_mask) if keep]
    assert all(segments[i] == 1 for i in target_positions) and segments[0] == 0
    with torch.inference_mode():  # and they matter: all-zero segments give another feature
        hidden = extractor.model(input_ids=torch.tensor([decoded.data.input_ids])).last_hidden_state[0]
    assert not torch.allclose(encoded.feature, hidden[torch.tensor(decoded.data.target_mask)].mean(0), atol=1e-4)


@pytest.mark.parametrize("family", DECODERS)
def test_cls_pooling_is_refused_for_a_causal_lm_in_one_line(folders, family) -> None:
    with pytest.raises(PipelineError, match="cls is refused .* causal LM") as info:
        make(folders, family, pooling="cls")
    assert "\n" not in str(info.value)


def test_a_decoder_input_is_specials_context_newline_target_with_nothing_added(folders) -> None:
    gpt2 = make(folders, "gpt2", context_window=1)
    tok = gpt2.tokenizer
    assert tok.pad_token_id is None and gpt2.pad_id == tok.eos_token_id  # padded with EOS, masked
    assert len(tok) == gpt2.model.get_input_embeddings().num_embeddings  # no token added
    decoded = gpt2.decoder()(TARGET)
    context = tok("Rachel: I'm so happy about the wedding.", add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    target = tok(TARGET["text"], add_special_tokens=False)["input_ids"]
    assert decoded.data.input_ids == context + newline + target  # GPT-2 adds no BOS
    assert decoded.data.target_mask == [False] * (len(context) + len(newline)) + [True] * len(target)

    llama = make(folders, "llama", context_window=1)
    assert llama.tokenizer.padding_side == "left" and llama.tokenizer.pad_token_id is None
    ids = llama.decoder()(TARGET).data.input_ids
    bos = llama.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1  # one BOS, not Llama's pair template (a BOS per sequence)
    target = llama.tokenizer(TARGET["text"], add_special_tokens=False)["input_ids"]
    assert ids[-len(target) :] == target  # the same tokens as the target alone


@pytest.mark.parametrize("family", ALL)
def test_truncation_keeps_the_target_and_the_latest_context_and_is_flagged(folders, family) -> None:
    alone = make(folders, family).decoder()(TARGET)
    budget = len(alone.data.input_ids) + 12
    extractor = make(folders, family, context_window=2, max_tokens=budget)
    decoded = extractor.decoder()(TARGET)
    assert decoded.flags == ["context_truncated"]
    assert len(decoded.data.input_ids) == budget
    assert squash(target_text(extractor, decoded), family) == squash(TARGET["text"], family)
    kept = extractor.tokenizer.decode(decoded.data.input_ids[: decoded.data.target_mask.index(True)])
    assert "wedding" in kept and "hey" not in kept.lower()  # the oldest context went first

    full = make(folders, family, context_window=2)
    long = row("long", 7, "I can't believe it! " * 40, "Chandler")
    full.plan([*DIALOGUE, long])
    decoded = full.decoder()(long)
    assert set(decoded.flags) == {"text_truncated", "context_truncated"}
    assert len(decoded.data.input_ids) == full.max_tokens == MAX_TOKENS
    assert sum(decoded.data.target_mask) > MAX_TOKENS - 4  # all but the specials is the target
    with torch.inference_mode():
        assert torch.isfinite(full.encode([decoded])[0].feature).all()


@pytest.mark.parametrize(("family", "overrides", "message"), [
    ("gpt2", {"layers": [3]}, r"layers: \[3\] out of range; .* has 3 hidden states"),
    ("llama", {"max_tokens": MAX_TOKENS + 1}, f"exceeds .* limit of {MAX_TOKENS}"),
    ("xlm-roberta", {"max_tokens": MAX_TOKENS + 1}, f"exceeds .* limit of {MAX_TOKENS}"),
])  # fmt: skip
def test_settings_a_family_cannot_honour_are_one_line_errors(folders, family, overrides, message) -> None:
    with pytest.raises(PipelineError, match=message) as info:
        make(folders, family, **overrides)
    assert "\n" not in str(info.value)


def test_an_unknown_model_type_is_refused_before_weights_are_loaded(tmp_path: Path) -> None:
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2).save_pretrained(tmp_path)  # a config, no weights
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "t5"
    with pytest.raises(PipelineError, match=r"is a 't5' model; hf_text knows bert, .*qwen2") as info:
        HFTextExtractor(HFTextConfig(model=str(tmp_path), num_workers=0), Path("."), torch.device("cpu"))
    assert "\n" not in str(info.value)
