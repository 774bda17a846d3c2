"""Text features from a Hugging Face text encoder over each utterance, optionally with its dialogue context.

Input with a context window of k: the k previous utterances of the same dialogue (in dialogue
order, each "Speaker: text") form the first sequence and the target utterance the second, so the
model sees `<s> context </s></s> target </s>`. Only the target's tokens are pooled (masked mean);
CLS pooling takes the first token, which with context has attended to the context as well.

Truncation is never silent. The context is cut from its oldest end first (flag
`context_truncated`); a target that alone exceeds the model's length is cut at its end (flag
`text_truncated`). Both flags appear in the store's report. Empty text has no feature (missing,
reason `empty_text`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from extractors.base import (
    Decoded,
    Decoder,
    Encoded,
    Extractor,
    ExtractorConfig,
    autocast,
    load_pretrained,
    register_extractor,
    weights_sha256,
)
from extractors.text import dialogue_contexts, utterance_text
from pipeline.core.torchvision_compat import ensure_torchvision_ops
from pipeline.core.errors import PipelineError
from pipeline.core.params import ParamError


@dataclass
class HFTextConfig(ExtractorConfig):
    """params.yaml `extract.<set>` with `extractor: hf_text`."""

    model: str = "roberta-large"  # local folder or hub id
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, averaged
    pooling: Literal["mean", "cls"] = "mean"  # mean (over the target's tokens) | cls
    context_window: int = 0  # previous utterances of the dialogue fed with the target
    max_tokens: int = 0  # 0 = the model's limit (512 for roberta-large)
    batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers:
            raise ParamError("layers", "must name at least one hidden layer")
        for name in ("context_window", "max_tokens"):
            if getattr(self, name) < 0:
                raise ParamError(name, f"must be 0 or more, got {getattr(self, name)}")


@dataclass(frozen=True)
class TokenizedUtterance:
    input_ids: list[int]
    target_mask: list[bool]  # True on the target utterance's own tokens


class TextDecoder(Decoder):
    """Row -> token ids of (context, target) within the length budget; runs in worker processes."""

    def __init__(self, tokenizer: Any, context: dict[str, str], max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.max_tokens = max_tokens

    def __call__(self, row: dict[str, Any]) -> Decoded:
        uid = row["utterance_id"]
        text = utterance_text(row)
        if not text:
            return Decoded(uid, missing="empty_text")
        tokenized, flags = self.tokenize(text, self.context.get(uid, ""))
        return Decoded(uid, data=tokenized, flags=flags)

    def tokenize(self, target: str, context: str) -> tuple[TokenizedUtterance, list[str]]:
        tok = self.tokenizer
        flags: list[str] = []
        target_len = len(tok(target, add_special_tokens=False)["input_ids"])
        if not context or target_len + tok.num_special_tokens_to_add(pair=True) >= self.max_tokens:
            if target_len + tok.num_special_tokens_to_add(pair=False) > self.max_tokens:
                flags.append("text_truncated")
            if context:
                flags.append("context_truncated")
            # the target loses its end; truncation_side is "left" only for the context's sake
            side, tok.truncation_side = tok.truncation_side, "right"
            try:
                enc = tok(target, truncation=True, max_length=self.max_tokens)
            finally:
                tok.truncation_side = side
            target_seq = 0
        else:
            full = tok(context, target)
            enc = tok(context, target, truncation="only_first", max_length=self.max_tokens)
            if len(full["input_ids"]) > len(enc["input_ids"]):
                flags.append("context_truncated")
            target_seq = 1
        mask = [s == target_seq for s in enc.sequence_ids()]
        return TokenizedUtterance(list(enc["input_ids"]), mask), flags


@register_extractor
class HFTextExtractor(Extractor):
    """Pooled hidden states of a Hugging Face text encoder (any `AutoModel` with hidden states)."""

    name = "hf_text"
    modality = "text"
    version = "1"
    config_class = HFTextConfig

    def __init__(self, config: HFTextConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        ensure_torchvision_ops()
        from transformers import AutoModel, AutoTokenizer

        where = "extract.text.model"
        self.tokenizer, folder = load_pretrained("text", config.model, AutoTokenizer.from_pretrained, where)
        self.tokenizer.truncation_side = "left"  # context loses its oldest tokens first
        self.model, folder = load_pretrained("text", config.model, AutoModel.from_pretrained, where)
        self.model.eval().to(device)
        self._sha256 = weights_sha256(folder)
        self.max_tokens = self._check_compatible(config)
        self._context: dict[str, str] = {}

    def _check_compatible(self, config: HFTextConfig) -> int:
        """Tokenizer and model must agree (vocabulary, length), or features would be garbage."""
        model_config = self.model.config
        vocab = model_config.vocab_size
        if len(self.tokenizer) > vocab:
            raise PipelineError(
                f"text model {config.model!r}: its tokenizer has {len(self.tokenizer)} tokens but the model's "
                f"embedding has {vocab} rows; the tokenizer does not belong to this model"
            )
        n_layers = model_config.num_hidden_layers + 1  # hidden_states includes the embeddings
        bad = [i for i in config.layers if not -n_layers <= i < n_layers]
        if bad:
            raise PipelineError(
                f"extract.text.layers: {bad} out of range; {config.model!r} has {n_layers} hidden states "
                f"(0 = embeddings, -1 = last layer)"
            )
        # RoBERTa's positions start after the padding index, so it fits max_position_embeddings - 2 tokens
        offset = (getattr(model_config, "pad_token_id", None) or 0) + 1 if model_config.model_type == "roberta" else 0
        model_limit = model_config.max_position_embeddings - offset
        limit = min(model_limit, self.tokenizer.model_max_length)
        if config.max_tokens > limit:
            raise PipelineError(f"extract.text.max_tokens={config.max_tokens} exceeds {config.model!r}'s limit of {limit}")
        return config.max_tokens or limit

    @property
    def model_id(self) -> str:
        return self.config.model

    @property
    def model_sha256(self) -> str:
        return self._sha256

    def plan(self, rows: Sequence[dict[str, Any]]) -> None:
        """Each utterance's context: the previous `context_window` texts of its dialogue."""
        self._context = dialogue_contexts(rows, self.config.context_window)

    def size_hint(self, row: dict[str, Any]) -> float:
        return len(self._context.get(row["utterance_id"], "")) + len(row.get("text") or "")

    def decoder(self) -> TextDecoder:
        return TextDecoder(self.tokenizer, self._context, self.max_tokens)

    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        items: list[TokenizedUtterance] = [d.data for d in batch]
        width = max(len(t.input_ids) for t in items)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        target = torch.zeros((len(items), width), dtype=torch.bool)
        for i, t in enumerate(items):
            n = len(t.input_ids)
            input_ids[i, :n] = torch.tensor(t.input_ids)
            attention[i, :n] = 1
            target[i, :n] = torch.tensor(t.target_mask)
        with autocast(self.device):
            out = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                output_hidden_states=True,
            )
        hidden = torch.stack([out.hidden_states[i] for i in self.config.layers]).float().mean(0)  # [B, T, H]
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = target.to(hidden.device, hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return [Encoded(d.utterance_id, pooled[i].cpu(), flags=list(d.flags)) for i, d in enumerate(batch)]
