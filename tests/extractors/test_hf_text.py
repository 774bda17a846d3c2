"""The RoBERTa text extractor: context window, target-only pooling, reported truncation, bad models."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from extractors.base import Decoded
from extractors.hf_text import HFTextConfig, HFTextExtractor
from pipeline.core.errors import PipelineError
from pipeline.core.params import section_to_dataclass
from tests.helpers import text_row as row


def make(model: Path, **overrides) -> HFTextExtractor:
    config = HFTextConfig(model=str(model), num_workers=0, **{"layers": [-1], **overrides})
    return HFTextExtractor(config, Path("."), torch.device("cpu"))


DIALOGUE = [
    row("u3", 5, "Why would you do that to me?", "Monica"),
    row("u1", 1, "Hey, how are you doing?", "Ross"),
    row("u2", 3, "I'm so happy about the wedding.", "Rachel"),
    row("x1", 0, "Hello there.", "Joey", dialogue="d2"),
]


def decode_one(extractor: HFTextExtractor, r: dict) -> Decoded:
    return extractor.decoder()(r)


def target_text(extractor: HFTextExtractor, decoded: Decoded) -> str:
    ids = [i for i, keep in zip(decoded.data.input_ids, decoded.data.target_mask) if keep]
    return extractor.tokenizer.decode(ids)


def test_context_is_the_previous_k_turns_of_the_same_dialogue_in_order(tiny_models) -> None:
    extractor = make(tiny_models["text"], context_window=1)
    extractor.plan(DIALOGUE)
    assert extractor._context["u1"] == ""
    assert extractor._context["u2"] == "Ross: Hey, how are you doing?"
    assert extractor._context["u3"] == "Rachel: I'm so happy about the wedding."  # k=1: only the latest
    assert extractor._context["x1"] == ""  # another dialogue's turns never leak in
    wide = make(tiny_models["text"], context_window=5)
    wide.plan(DIALOGUE)
    assert wide._context["u3"] == "Ross: Hey, how are you doing? Rachel: I'm so happy about the wedding."


def test_only_the_target_tokens_are_marked_for_pooling(tiny_models) -> None:
    extractor = make(tiny_models["text"], context_window=2)
    extractor.plan(DIALOGUE)
    decoded = decode_one(extractor, DIALOGUE[0])
    assert target_text(extractor, decoded) == "Why would you do that to me?"
    assert len(decoded.data.input_ids) > sum(decoded.data.target_mask) + 4  # the context is really there
    assert decoded.flags == []


def test_mean_pooling_averages_the_chosen_layers_over_target_tokens_only(tiny_models) -> None:
    extractor = make(tiny_models["text"], context_window=2, layers=[-2, -1])
    extractor.plan(DIALOGUE)
    decoded = decode_one(extractor, DIALOGUE[0])
    with torch.inference_mode():
        [encoded] = extractor.encode([decoded])
        ids = torch.tensor([decoded.data.input_ids])
        hidden = extractor.model(input_ids=ids, output_hidden_states=True).hidden_states
    mask = torch.tensor(decoded.data.target_mask)
    expected = ((hidden[-2][0] + hidden[-1][0]) / 2)[mask].mean(0)
    torch.testing.assert_close(encoded.feature, expected, rtol=1e-5, atol=1e-5)
    assert encoded.feature.shape == (64,)


def test_context_changes_the_feature_and_cls_differs_from_mean(tiny_models) -> None:
    with_context = make(tiny_models["text"], context_window=2)
    with_context.plan(DIALOGUE)
    alone = make(tiny_models["text"])
    alone.plan(DIALOGUE)
    cls = make(tiny_models["text"], pooling="cls")
    cls.plan(DIALOGUE)
    with torch.inference_mode():
        a = with_context.encode([decode_one(with_context, DIALOGUE[0])])[0].feature
        b = alone.encode([decode_one(alone, DIALOGUE[0])])[0].feature
        c = cls.encode([decode_one(cls, DIALOGUE[0])])[0].feature
    assert not torch.allclose(a, b)
    assert not torch.allclose(b, c)


def test_padding_in_a_batch_leaves_each_feature_unchanged(tiny_models) -> None:
    extractor = make(tiny_models["text"], context_window=2)
    extractor.plan(DIALOGUE)
    decoded = [decode_one(extractor, r) for r in DIALOGUE]
    with torch.inference_mode():
        batched = {e.utterance_id: e.feature for e in extractor.encode(decoded)}
        for d in decoded:
            alone = extractor.encode([d])[0].feature
            torch.testing.assert_close(batched[d.utterance_id], alone, rtol=1e-4, atol=1e-5)


def test_roberta_positions_start_after_the_padding_index_whatever_the_padding_side(tiny_models) -> None:
    """RoBERTa numbers its tokens from pad_token_id + 1 = 2; the extractor passes those positions
    explicitly, so a left-padded batch gives the model the same positions as a right-padded one."""
    extractor = make(tiny_models["text"], context_window=2)
    extractor.plan(DIALOGUE)
    decoded = [decode_one(extractor, r) for r in DIALOGUE]
    seen: list[dict] = []
    extractor.model.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(kwargs), with_kwargs=True)
    features = {}
    for side in ("right", "left"):
        extractor.tokenizer.padding_side = side
        with torch.inference_mode():
            features[side] = torch.stack([e.feature for e in extractor.encode(decoded)])
        positions, attention = seen[-1]["position_ids"], seen[-1]["attention_mask"].bool()
        for i, d in enumerate(decoded):
            assert positions[i][attention[i]].tolist() == list(range(2, 2 + len(d.data.input_ids)))
    torch.testing.assert_close(features["left"], features["right"], rtol=1e-4, atol=1e-5)


def test_context_truncation_is_flagged_and_keeps_the_most_recent_context(tiny_models) -> None:
    extractor = make(tiny_models["text"], context_window=5, max_tokens=24)
    extractor.plan(DIALOGUE)
    decoded = decode_one(extractor, DIALOGUE[0])
    assert decoded.flags == ["context_truncated"]
    assert len(decoded.data.input_ids) == 24
    assert target_text(extractor, decoded) == "Why would you do that to me?"
    kept_context = extractor.tokenizer.decode(decoded.data.input_ids[: decoded.data.target_mask.index(True)])
    assert "wedding" in kept_context and "Hey" not in kept_context  # the oldest context went first


def test_a_target_longer_than_the_model_limit_is_truncated_and_flagged(tiny_models) -> None:
    extractor = make(tiny_models["text"], context_window=2)
    long = row("long", 7, "I can't believe it! " * 80, "Chandler")
    extractor.plan([*DIALOGUE, long])
    decoded = decode_one(extractor, long)
    assert set(decoded.flags) == {"text_truncated", "context_truncated"}
    assert len(decoded.data.input_ids) == extractor.max_tokens == 128
    with torch.inference_mode():
        assert torch.isfinite(extractor.encode([decoded])[0].feature).all()


def test_empty_text_has_no_feature_and_says_why(tiny_models) -> None:
    extractor = make(tiny_models["text"])
    extractor.plan(DIALOGUE)
    decoded = decode_one(extractor, row("e", 9, "   "))
    assert decoded.missing == "empty_text" and decoded.data is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": [5]}, "out of range"),
        ({"max_tokens": 4096}, "exceeds"),
    ],
)
def test_settings_the_model_cannot_honour_are_clear_errors(tiny_models, overrides, message) -> None:
    with pytest.raises(PipelineError, match=message):
        make(tiny_models["text"], **overrides)


def test_bad_config_values_are_rejected_at_the_edge() -> None:
    for bad, message in (
        ({"pooling": "max"}, r"extract\.text\.pooling: must be one of 'mean', 'cls', 'last', got 'max'"),
        ({"layers": []}, r"extract\.text\.layers: must name at least one hidden layer"),
        ({"context_window": -1}, r"extract\.text\.context_window: must be 0 or more, got -1"),
    ):
        with pytest.raises(PipelineError, match=message):
            section_to_dataclass(HFTextConfig, bad, "params.yaml:extract.text")


def test_a_tokenizer_from_another_model_is_refused(tiny_models, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = tmp_path / "mismatched"
    shutil.copytree(tiny_models["text"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"extra{i}" for i in range(1000)])
    tokenizer.save_pretrained(folder)
    with pytest.raises(PipelineError, match="does not belong to this model"):
        make(folder)


def test_missing_model_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        make(tmp_path / "no-such-model")
    assert "does not exist" in str(info.value) and "\n" not in str(info.value)


def test_unreachable_hub_id_fails_fast_with_how_to_provide_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        make(Path("roberta-large"))
    message = str(info.value)
    assert "'roberta-large'" in message and "hf download roberta-large" in message and "\n" not in message
    assert time.monotonic() - start < 30
