"""Text features from a Hugging Face text model (an encoder or a decoder-only LM) over each utterance,
optionally with its dialogue context; by hub id or local folder.

Families (`FAMILIES`, keyed by the checkpoint's `config.model_type`; any other type is a one-line
error, since each family's input conventions below must be known for its features to mean anything):

- Encoders, BERT, ELECTRA, DeBERTa-v2/v3, RoBERTa, XLM-R: with a context window of k, the k previous
  utterances of the same dialogue (in dialogue order, each "Speaker: text") are the first sequence and
  the target the second, in the tokenizer's own pair template (`<s> context </s></s> target </s>`
  for RoBERTa / XLM-R, `[CLS] context [SEP] target [SEP]` for BERT / ELECTRA / DeBERTa). The segment
  ids the tokenizer returns with them (0 context, 1 target) are passed as `token_type_ids` when the
  model has segment embeddings (BERT, ELECTRA, DeBERTa-v2; not DeBERTa-v3, whose type_vocab_size is 0).
- Decoder-only LMs, GPT-2, Llama, Qwen2: no pair template exists (Llama's would put a BOS before each
  sequence), so the input is built from separately tokenized pieces: the tokenizer's own single-sequence
  specials (Llama's BOS, nothing for GPT-2 / Qwen2), the context, a newline (it separates dialogue
  lines, where an EOS would tell the LM the context is another document; the EOS is used only when
  the tokenizer cannot encode a newline), then the target. Tokenizing the target alone gives it the
  same tokens with or without context. A tokenizer without a pad token (GPT-2, Llama) pads with its
  EOS (else id 0): padded positions are masked and never pooled, and no token is added, so the
  embedding keeps its size.

Pooling, over the mean of `layers` (hidden_states indices, 0 = embeddings): `mean` averages the
target's own tokens (never the context, the specials or the padding); `cls` takes the first token,
which with context has attended to the context as well (encoders only: in a causal LM the first
token sees nothing after it, so it is refused); `last` takes the target's last token, the natural
summary of a causal LM, which has read the context and the whole target by then (allowed for an
encoder too, where it is one subword among many).

Padding follows the tokenizer's `padding_side` (Llama's is left), and every model gets explicit
position ids counted over its real tokens (from `pad_token_id + 1` for RoBERTa / XLM-R, whose
positions start after the padding index, else from 0), so left and right padding and whatever else
is in a batch leave a feature unchanged up to float rounding (tested per family). DeBERTa's relative
positions depend only on token distances, which padding does not change.

Length: `max_tokens` (0 = the model's limit: `max_position_embeddings`, less `pad_token_id + 1`
for RoBERTa / XLM-R; DeBERTa's trained length for its relative positions; `n_positions` for
GPT-2; never more than the tokenizer's `model_max_length`). Truncation is never silent. The context
is cut from its oldest end first (flag `context_truncated`); a target that alone exceeds the length is
cut at its end (flag `text_truncated`). Both flags appear in the store's report. Empty text has no
feature (missing, reason `empty_text`).
"""

from __future__ import annotations

import inspect
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


@dataclass(frozen=True)
class Family:
    """What the extractor must know about a model family to feed it correctly."""

    causal: bool  # decoder-only LM: no pair template, no cls pooling
    positions_after_pad: bool = False  # position ids start at pad_token_id + 1 (RoBERTa's convention)


FAMILIES: dict[str, Family] = {
    "bert": Family(causal=False),
    "electra": Family(causal=False),
    "deberta-v2": Family(causal=False),  # DeBERTa-v2 and v3 checkpoints both say deberta-v2
    "roberta": Family(causal=False, positions_after_pad=True),
    "xlm-roberta": Family(causal=False, positions_after_pad=True),
    "gpt2": Family(causal=True),
    "llama": Family(causal=True),
    "qwen2": Family(causal=True),
}


@dataclass
class HFTextConfig(ExtractorConfig):
    """params.yaml `extract.<set>` with `extractor: hf_text`."""

    model: str = "roberta-large"  # local folder or hub id
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, averaged
    pooling: Literal["mean", "cls", "last"] = "mean"  # over the target's tokens | first token | target's last token
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
    token_type_ids: list[int] | None = None  # segment ids, for the models that take them


class TextDecoder(Decoder):
    """Row -> token ids of (context, target) within the length budget; runs in worker processes."""

    def __init__(self, tokenizer: Any, context: dict[str, str], max_tokens: int, segment_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.max_tokens = max_tokens
        self.segment_ids = segment_ids

    def __call__(self, row: dict[str, Any]) -> Decoded:
        uid = row["utterance_id"]
        text = utterance_text(row)
        if not text:
            return Decoded(uid, missing="empty_text")
        tokenized, flags = self.tokenize(text, self.context.get(uid, ""))
        return Decoded(uid, data=tokenized, flags=flags)

    def tokenize(self, target: str, context: str) -> tuple[TokenizedUtterance, list[str]]:
        """The tokenizer's pair template, (context, target), the context truncated first."""
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
        segments = list(enc["token_type_ids"]) if self.segment_ids else None
        return TokenizedUtterance(list(enc["input_ids"]), mask, segments), flags


class CausalTextDecoder(TextDecoder):
    """Decoder-only LMs: specials + context + separator + target + specials, assembled from ids."""

    def __init__(self, tokenizer: Any, context: dict[str, str], max_tokens: int) -> None:
        super().__init__(tokenizer, context, max_tokens)
        self.prefix, self.suffix = single_sequence_specials(tokenizer)
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.separator: list[int] = newline or eos

    def tokenize(self, target: str, context: str) -> tuple[TokenizedUtterance, list[str]]:
        tok = self.tokenizer
        flags: list[str] = []
        budget = self.max_tokens - len(self.prefix) - len(self.suffix)
        target_ids = tok(target, add_special_tokens=False)["input_ids"]
        if len(target_ids) > budget:
            flags.append("text_truncated")
            target_ids = target_ids[:budget]  # the target loses its end
        context_ids = tok(context, add_special_tokens=False)["input_ids"] if context else []
        room = budget - len(target_ids) - len(self.separator)
        if len(context_ids) > max(room, 0):
            flags.append("context_truncated")
            context_ids = context_ids[len(context_ids) - room :] if room > 0 else []  # oldest end first
        separator = self.separator if context_ids else []
        head = [*self.prefix, *context_ids, *separator]
        ids = [*head, *target_ids, *self.suffix]
        mask = [False] * len(head) + [True] * len(target_ids) + [False] * len(self.suffix)
        return TokenizedUtterance(ids, mask), flags


def single_sequence_specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after one sequence (Llama: [BOS], []; GPT-2: [], [])."""
    probe = "hello"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain) :])
    raise PipelineError(f"the text tokenizer's special tokens could not be located around {probe!r}: {full} vs {plain}")


@register_extractor
class HFTextExtractor(Extractor):
    """Pooled hidden states of a Hugging Face text model of one of `FAMILIES`."""

    name = "hf_text"
    modality = "text"
    version = "1"
    config_class = HFTextConfig

    def __init__(self, config: HFTextConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        ensure_torchvision_ops()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        where = "extract.text.model"
        model_config, _ = load_pretrained("text", config.model, AutoConfig.from_pretrained, where)
        self.family = self._family(config, model_config)
        self.tokenizer, folder = load_pretrained("text", config.model, AutoTokenizer.from_pretrained, where)
        self.tokenizer.truncation_side = "left"  # context loses its oldest tokens first
        self.model, folder = load_pretrained("text", config.model, AutoModel.from_pretrained, where)
        self.model.eval().to(device)
        self._sha256 = weights_sha256(folder)
        # RoBERTa / XLM-R count positions from pad_token_id + 1; the others from 0
        pad_index = getattr(self.model.config, "pad_token_id", None) or 0
        self.position_offset = pad_index + 1 if self.family.positions_after_pad else 0
        self.max_tokens = self._check_compatible(config)
        self.segment_ids = self._takes_segment_ids(config)
        # GPT-2 and Llama ship no pad token: pad with EOS (or 0); padded positions are masked, never pooled
        self.pad_id = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None)
        self.takes_position_ids = "position_ids" in inspect.signature(self.model.forward).parameters
        self._context: dict[str, str] = {}

    @staticmethod
    def _family(config: HFTextConfig, model_config: Any) -> Family:
        """The checkpoint's family from its config alone, before any weights are loaded."""
        model_type = getattr(model_config, "model_type", "")
        if model_type not in FAMILIES:
            raise PipelineError(
                f"text model {config.model!r} is a {model_type!r} model; hf_text knows "
                f"{', '.join(FAMILIES)} (a family is one entry of FAMILIES in extractors/hf_text.py, with its tests)"
            )
        family = FAMILIES[model_type]
        if family.causal and config.pooling == "cls":
            raise PipelineError(
                f"extract.text.pooling: cls is refused for {config.model!r}, a causal LM ({model_type}) whose "
                f"first token attends to nothing after it; use last or mean"
            )
        return family

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
        # RoBERTa's positions start after the padding index, so it fits max_position_embeddings - 2 tokens;
        # GPT-2's n_positions answers as max_position_embeddings; DeBERTa's is its trained length
        model_limit = model_config.max_position_embeddings - self.position_offset
        limit = min(model_limit, self.tokenizer.model_max_length)
        if config.max_tokens > limit:
            raise PipelineError(f"extract.text.max_tokens={config.max_tokens} exceeds {config.model!r}'s limit of {limit}")
        return config.max_tokens or limit

    def _takes_segment_ids(self, config: HFTextConfig) -> bool:
        """Pass the tokenizer's segment ids when it makes them and the model embeds them."""
        pair = self.tokenizer("a", "b")
        if self.family.causal or "token_type_ids" not in pair:
            return False
        n_types = getattr(self.model.config, "type_vocab_size", 0) or 0
        if n_types == 0:  # DeBERTa-v3: no segment embeddings
            return False
        largest = max(pair["token_type_ids"])
        if largest >= n_types:
            raise PipelineError(
                f"text model {config.model!r}: its tokenizer makes segment id {largest} but the model embeds "
                f"{n_types} segment type(s); the tokenizer does not belong to this model"
            )
        return True

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
        if self.family.causal:
            return CausalTextDecoder(self.tokenizer, self._context, self.max_tokens)
        return TextDecoder(self.tokenizer, self._context, self.max_tokens, self.segment_ids)

    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        items: list[TokenizedUtterance] = [d.data for d in batch]
        width = max(len(t.input_ids) for t in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        target = torch.zeros((len(items), width), dtype=torch.bool)
        segments = torch.zeros((len(items), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, t in enumerate(items):
            n = len(t.input_ids)
            span = slice(width - n, width) if left else slice(0, n)
            input_ids[i, span] = torch.tensor(t.input_ids)
            attention[i, span] = 1
            target[i, span] = torch.tensor(t.target_mask)
            if t.token_type_ids is not None:
                segments[i, span] = torch.tensor(t.token_type_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if self.takes_position_ids:  # counted over real tokens, so left padding shifts nothing
            inputs["position_ids"] = (attention.cumsum(1) - 1).clamp(min=0) + self.position_offset
        if self.segment_ids:
            inputs["token_type_ids"] = segments
        with autocast(self.device):
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()}, output_hidden_states=True)
        hidden = torch.stack([out.hidden_states[i] for i in self.config.layers]).float().mean(0)  # [B, T, H]
        rows = torch.arange(len(items), device=hidden.device)
        if self.config.pooling == "cls":
            first_real = attention.argmax(1).to(hidden.device)  # 0 unless padded on the left
            pooled = hidden[rows, first_real]
        elif self.config.pooling == "last":
            last_target = width - 1 - target.flip(1).int().argmax(1).to(hidden.device)
            pooled = hidden[rows, last_target]
        else:
            weights = target.to(hidden.device, hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return [Encoded(d.utterance_id, pooled[i].cpu(), flags=list(d.flags)) for i, d in enumerate(batch)]
