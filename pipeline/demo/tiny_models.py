"""Tiny offline stand-ins for the pretrained checkpoints the extractors load.

The real extractors load `roberta-large` and a `facebook/wav2vec2-base`-style checkpoint with
`from_pretrained(path)`, and FaceNet's VGGFace2 InceptionResnetV1 weights from a local file. All
three normally come from a hub, which tests and the offline demo cannot reach. This module builds
small models with seeded random weights (and a byte-level BPE tokenizer trained here on a built-in
English corpus), saved in the same on-disk formats, so the extractors' loading code stays the real
path-based one. Their features are meaningless; only shapes, formats and plumbing are real.

Same seed, same bytes: every file written is a pure function of the seed and the library versions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from pipeline.core.torchvision_compat import ensure_torchvision_ops

# transformers' modeling code and facenet_pytorch both import torchvision, which fails on a CPU-only
# torch until the fallback NMS is registered; it must run before either is imported.
ensure_torchvision_ops()

from facenet_pytorch import InceptionResnetV1  # noqa: E402
from safetensors.torch import save as safetensors_bytes  # noqa: E402
from tokenizers import AddedToken, ByteLevelBPETokenizer  # noqa: E402
from transformers import (  # noqa: E402
    RobertaConfig,
    RobertaModel,
    RobertaTokenizerFast,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from pipeline.core.atomic import atomic_output_dir, atomic_write_bytes, write_marker  # noqa: E402
from pipeline.core.locks import output_lock  # noqa: E402
from pipeline.core.outputs import check_output  # noqa: E402

STAGE = "tiny-models"  # the `mer` subcommand, named by the outputs' markers
ROBERTA_DIR = "roberta-tiny"
WAV2VEC2_DIR = "wav2vec2-tiny"
FACENET_FILE = "facenet-random.safetensors"

T = TypeVar("T")

# RoBERTa's special tokens in RoBERTa's id order: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# An upper bound: BPE stops early once every word of the corpus is a single token.
TOKENIZER_VOCAB_SIZE = 2000
ROBERTA_MAX_TOKENS = 128

# Stands in for roberta-large (24 layers, hidden 1024): same architecture and conventions, tiny sizes.
# Positions start at padding_idx + 1 = 2, hence max_position_embeddings = max tokens + 2.
ROBERTA_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": ROBERTA_MAX_TOKENS + 2,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
}

# Stands in for facebook/wav2vec2-base: the real 7-layer conv stack (total stride 320 samples, one
# frame per 20 ms at 16 kHz) and group-norm feature extractor, with narrow convs and a tiny encoder.
WAV2VEC2_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": (32, 32, 32, 32, 32, 32, 32),
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
WAV2VEC2_FEATURE_EXTRACTOR = {
    "feature_size": 1,
    "sampling_rate": 16000,
    "padding_value": 0.0,
    "do_normalize": True,
    "return_attention_mask": True,
}

# The tokenizer's training text: everyday conversational English in the register of MELD (Friends)
# and IEMOCAP dialogues, with the emotion vocabulary of both label sets and common contractions.
SUBJECTS = ("I'm", "You're", "She's", "He's", "We're", "They're", "I am", "Honestly, I'm")
INTENSIFIERS = ("so", "really", "very", "a little", "kind of", "totally", "not", "pretty")
EMOTION_WORDS = (
    "happy", "sad", "angry", "excited", "frustrated", "scared", "surprised", "disgusted",
    "calm", "nervous", "upset", "annoyed", "glad", "worried", "thrilled", "miserable",
    "furious", "relieved", "jealous", "lonely", "proud", "ashamed", "bored", "confused",
    "hopeful", "neutral", "afraid", "amazed", "grateful", "embarrassed",
)  # fmt: skip
REASONS = (
    "about the wedding.", "because of what you said.", "right now!", "that he left.",
    "about my new job.", "with you, okay?", "after the phone call.", "about tomorrow.",
    "since we moved here.", "and I don't know why.", "that she's coming back.", "about the money.",
    "that you didn't call me.", "about this whole thing.", "when I saw the letter.",
)  # fmt: skip
LINES = (
    "Oh my God, what are you doing here?", "Hey, how are you doing?", "I can't believe it!",
    "Are you kidding me?", "Yeah, that's fine.", "No, no, no, wait a second.", "Okay, okay, calm down.",
    "Why would you do that to me?", "I love you, you know that.", "I hate it when you do that.",
    "That's the best news I've ever heard!", "Well, I'm not sure about that.",
    "Could you please listen to me?", "You never listen to me!", "Thank you so much, really.",
    "I'm sorry, I didn't mean it.", "What's going on with you?", "It's not a big deal.",
    "We'll talk about it later.", "They've been waiting for an hour.", "Get out of my apartment!",
    "Wow, this is amazing.", "Uh, I don't think so.", "Hmm, let me think about it.",
    "Don't worry, it'll be fine.", "You're gonna love this.", "I just wanted to say goodbye.",
    "Do you want some coffee?", "Where were you last night?", "I have no idea what you're talking about.",
    "Stop it, that's disgusting!", "My father passed away last year.", "I got the job! I got the job!",
    "She's pregnant?!", "Can we just go home, please?", "It's been a really long day.",
    "You scared me to death.", "I miss you so much.", "Nobody told me anything.", "Let's get married.",
    "Ross, Rachel, Monica, Chandler, Joey and Phoebe are at Central Perk.",
    "The flight to Paris leaves at 7:30, so we have 2 hours.", "Happy birthday! How old are you, 30?",
)  # fmt: skip
WORDS = """
the be to of and a in that have it for not on with he as you do at this but his by from they we say
her she or an will my one all would there their what so up out if about who get which go me when
make can like time no just him know take people into year your good some could them see other than
then now look only come its over think also back after use two how our work first well way even new
want because any these give day most us is was are were been has had did does doing said got went
gone seen saw made came took knew thought told asked felt left kept meant brought bought heard found
mom dad mother father sister brother friend friends boyfriend girlfriend husband wife baby kid kids
family guy guys girl girls man woman honey sweetie dude buddy everybody somebody anybody nobody
home house apartment room kitchen bed door car job office money phone call party date dinner lunch
breakfast coffee beer wine night morning tonight tomorrow yesterday today week weekend month hour
minute second moment life world thing things stuff idea problem question answer reason story truth
lie joke fun game show movie music song dance wedding ring gift present letter picture book school
class doctor hospital nurse police store city street beach trip vacation plane flight ticket
yes yeah yep nope okay ok oh ah uh um hmm huh wow hey hi hello bye goodbye please thanks thank sorry
excuse pardon right sure maybe really actually probably definitely absolutely exactly totally
seriously honestly basically literally anyway whatever again still already always never ever often
sometimes together alone here everywhere somewhere nowhere away down off around
love hate like miss need hope wish wonder worry care mind believe understand remember forget
feel feeling feelings happy happiness joy joyful sad sadness angry anger mad fear scared afraid
terrified surprise surprised shocked disgust disgusted gross excited exciting frustrated frustration
neutral calm relaxed nervous anxious stressed upset hurt cry crying tears laugh laughing smile
smiling scream yelling shout kiss hug fight argue argument break broke broken sorry guilty jealous
lonely proud embarrassed ashamed bored tired sick fine great awesome amazing wonderful terrible
horrible awful stupid crazy weird funny cute beautiful pretty nice sweet mean rude
big small little long short old young hot cold hard easy late early best better worse worst last
next few many much more less enough every each both
""".split()


def training_corpus() -> list[str]:
    """The tokenizer's training text: generated emotion sentences, dialogue lines, then word list."""
    # every emotion with every subject; intensifier and reason cycle so that pairs vary
    generated = [
        f"{subject} {INTENSIFIERS[(i + j) % len(INTENSIFIERS)]} {emotion} "
        f"{REASONS[(3 * i + j) % len(REASONS)]}"
        for i, emotion in enumerate(EMOTION_WORDS)
        for j, subject in enumerate(SUBJECTS)
    ]
    words = [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 12)]
    return generated + list(LINES) + words


def train_roberta_tokenizer() -> RobertaTokenizerFast:
    """Byte-level BPE trained on the built-in corpus, wrapped as RoBERTa's tokenizer.

    Byte-level BPE starts from all 256 byte symbols, so any text encodes without <unk> and decodes
    back exactly; the merges only decide how short the ids are.
    """
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        training_corpus(),
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(ROBERTA_SPECIAL_TOKENS),
    )
    model = json.loads(bpe.to_str())["model"]  # the BPE model exposes its merges only here
    return RobertaTokenizerFast(
        vocab=model["vocab"],
        merges=[tuple(pair) for pair in model["merges"]],
        # as in roberta-large: "<mask>" swallows the space before it
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
        model_max_length=ROBERTA_MAX_TOKENS,
    )


def build_tiny_roberta(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny RoBERTa (tokenizer + random model) that `Auto*.from_pretrained(out_dir)` loads."""
    tokenizer = train_roberta_tokenizer()
    config = RobertaConfig(vocab_size=len(tokenizer), **ROBERTA_CONFIG)
    model = _seeded(seed, lambda: RobertaModel(config))
    with atomic_output_dir(Path(out_dir), STAGE) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return Path(out_dir)


def build_tiny_wav2vec2(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random wav2vec2 and its feature extractor, loadable like a downloaded checkpoint."""
    config = Wav2Vec2Config(**WAV2VEC2_CONFIG)
    model = _seeded(seed, lambda: Wav2Vec2Model(config))
    with atomic_output_dir(Path(out_dir), STAGE) as tmp:
        Wav2Vec2FeatureExtractor(**WAV2VEC2_FEATURE_EXTRACTOR).save_pretrained(tmp)
        model.save_pretrained(tmp)
    return Path(out_dir)


def build_random_facenet(out_path: Path, seed: int = 0) -> Path:
    """Write seeded random InceptionResnetV1 weights (no classifier) where VGGFace2 weights would go.

    It is the embedding network only: the real VGGFace2 file also holds an 8631-class `logits`
    layer, which an embedding extractor does not use.
    """
    model = _seeded(seed, lambda: InceptionResnetV1(pretrained=None, classify=False))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    # One metadata key only: safetensors writes several in an order that changes from run to run.
    atomic_write_bytes(Path(out_path), safetensors_bytes(state, metadata={"format": "pt"}))
    return Path(out_path)


def build_all(out_dir: Path, seed: int = 0, wait_s: float = 0.0) -> dict[str, Path]:
    """Build the three stand-ins under `out_dir`; each appears whole or not at all.

    `out_dir` must be absent, empty or an earlier output of this stage (`pipeline.core.outputs`);
    its marker is written first, then each model folder (marked too) or file is put in place. The
    run holds `out_dir`'s lock (`pipeline.core.locks`), waiting up to `wait_s` seconds for another run."""
    out_dir = Path(out_dir)
    check_output(out_dir, STAGE, option="OUT")
    with output_lock(out_dir, STAGE, wait_s):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_marker(out_dir, STAGE)
        return {
            "text": build_tiny_roberta(out_dir / ROBERTA_DIR, seed),
            "audio": build_tiny_wav2vec2(out_dir / WAV2VEC2_DIR, seed),
            "face": build_random_facenet(out_dir / FACENET_FILE, seed),
        }


def _seeded(seed: int, factory: Callable[[], T]) -> T:
    """Run `factory` under `seed` without disturbing the caller's global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
