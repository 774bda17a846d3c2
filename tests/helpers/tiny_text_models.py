"""Tiny random text models of each family `hf_text` supports, built offline for its tests.

Each builder writes a folder that `AutoTokenizer` / `AutoModel.from_pretrained(folder)` load, as a
downloaded checkpoint would be: the family's own config and model class with seeded random weights
(hidden 32, 2 layers), and the family's own tokenizer class over a vocabulary trained here with the
`tokenizers` library on the demo's built-in English corpus (WordPiece for BERT / ELECTRA, Unigram for
DeBERTa-v2 / XLM-R, byte-level BPE for RoBERTa / GPT-2 / Qwen2, Metaspace BPE with byte fallback
for Llama), so each family's tokenizer quirks (segment ids, pair templates, BOS, no pad token, left
padding) are the real ones. The features are meaningless; only the plumbing is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    BertWordPieceTokenizer,
    ByteLevelBPETokenizer,
    SentencePieceBPETokenizer,
    SentencePieceUnigramTokenizer,
)

from pipeline.core.torchvision_compat import ensure_torchvision_ops
from pipeline.demo.tiny_models import training_corpus

ensure_torchvision_ops()  # transformers' modeling code imports torchvision

import transformers  # noqa: E402

MAX_TOKENS = 64  # every tiny model's length limit (after each family's position quirks)
VOCAB_SIZE = 600  # an upper bound; the trainers stop once the corpus is covered
COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
ENCODER = {**COMMON, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _wordpiece_vocab() -> dict[str, int]:
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(
        training_corpus(), vocab_size=VOCAB_SIZE, min_frequency=1, show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )  # fmt: skip
    return trainer.get_vocab()


def _unigram_vocab(specials: list[str]) -> list[tuple[str, float]]:
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(
        training_corpus(), vocab_size=VOCAB_SIZE, show_progress=False, special_tokens=specials, unk_token=specials[1]
    )
    return [tuple(piece) for piece in json.loads(trainer.to_str())["model"]["vocab"]]


def _byte_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        training_corpus(), vocab_size=VOCAB_SIZE, min_frequency=1, show_progress=False, special_tokens=specials
    )
    model = json.loads(trainer.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def _metaspace_bpe_with_byte_fallback() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama's layout: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then the learned pieces."""
    trainer = SentencePieceBPETokenizer()
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer.train_from_iterator(
        training_corpus(), vocab_size=VOCAB_SIZE + 256, min_frequency=1, show_progress=False, special_tokens=specials
    )
    model = json.loads(trainer.to_str())["model"]
    return model["vocab"], [tuple(pair) for pair in model["merges"]]


def _save(out_dir: Path, tokenizer: Any, config: Any, seed: int) -> Path:
    """Random weights for `config` under `seed` (the global RNG left alone), saved with the tokenizer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def build_bert(out_dir: Path, seed: int = 0) -> Path:
    tokenizer = transformers.BertTokenizer(vocab=_wordpiece_vocab(), model_max_length=MAX_TOKENS)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS, type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id, **ENCODER,
    )
    return _save(out_dir, tokenizer, config, seed)


def build_electra(out_dir: Path, seed: int = 0) -> Path:
    # ELECTRA ships BERT's WordPiece tokenizer; its embeddings are narrower than its layers
    tokenizer = transformers.BertTokenizer(vocab=_wordpiece_vocab(), model_max_length=MAX_TOKENS)
    config = transformers.ElectraConfig(
        vocab_size=len(tokenizer), embedding_size=16, max_position_embeddings=MAX_TOKENS, type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id, **ENCODER,
    )
    return _save(out_dir, tokenizer, config, seed)


def build_roberta(out_dir: Path, seed: int = 0) -> Path:
    vocab, merges = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    # positions start after the padding index (1): max_position_embeddings = max tokens + 2
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS + 2, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, **ENCODER,
    )
    return _save(out_dir, tokenizer, config, seed)


def build_xlm_roberta(out_dir: Path, seed: int = 0) -> Path:
    vocab = _unigram_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = transformers.XLMRobertaTokenizer(vocab=vocab, model_max_length=MAX_TOKENS)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS + 2, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, **ENCODER,
    )
    return _save(out_dir, tokenizer, config, seed)


def build_deberta_v2(out_dir: Path, seed: int = 0, position_biased_input: bool = False) -> Path:
    """DeBERTa-v3's layout by default: relative positions only (no absolute table), segment ids 0/1
    from the tokenizer with a type_vocab_size of 0; `position_biased_input` adds DeBERTa-v2's
    absolute position table and segment embeddings."""
    vocab = _unigram_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer = transformers.DebertaV2Tokenizer(vocab=vocab, model_max_length=MAX_TOKENS)
    config = transformers.DebertaV2Config(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS, relative_attention=True,
        position_buckets=16, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
        position_biased_input=position_biased_input, type_vocab_size=2 if position_biased_input else 0,
        pad_token_id=0, norm_rel_ebd="layer_norm", share_att_key=True, **ENCODER,
    )
    return _save(out_dir, tokenizer, config, seed)


def build_gpt2(out_dir: Path, seed: int = 0) -> Path:
    """GPT-2 as shipped: no pad token, no BOS added, right padding."""
    vocab, merges = _byte_bpe(["<|endoftext|>"])
    tokenizer = transformers.GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=MAX_TOKENS, n_embd=32, n_layer=2, n_head=4, n_inner=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    return _save(out_dir, tokenizer, config, seed)


def build_llama(out_dir: Path, seed: int = 0) -> Path:
    """Llama as shipped: BOS added, no pad token, left padding; grouped-query attention, RoPE."""
    vocab, merges = _metaspace_bpe_with_byte_fallback()
    tokenizer = transformers.LlamaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS, add_bos_token=True)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS, num_key_value_heads=2,
        bos_token_id=1, eos_token_id=2, pad_token_id=None, **COMMON,
    )
    return _save(out_dir, tokenizer, config, seed)


def build_qwen2(out_dir: Path, seed: int = 0) -> Path:
    """Qwen2 as shipped: no BOS, pad = eos = <|endoftext|>; attention with biases, GQA, RoPE."""
    vocab, merges = _byte_bpe(["<|endoftext|>"])
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS, num_key_value_heads=2,
        bos_token_id=None, eos_token_id=0, **COMMON,
    )
    return _save(out_dir, tokenizer, config, seed)


BUILDERS: dict[str, Callable[..., Path]] = {
    "bert": build_bert,
    "electra": build_electra,
    "roberta": build_roberta,
    "xlm-roberta": build_xlm_roberta,
    "deberta-v2": build_deberta_v2,
    "gpt2": build_gpt2,
    "llama": build_llama,
    "qwen2": build_qwen2,
}
