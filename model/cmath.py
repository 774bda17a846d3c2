"""CMATH: Cross-Modality Augmented Transformer with Hierarchical Variational Distillation.

A reconstruction of Zhu et al., "CMATH: Cross-Modality Augmented Transformer with Hierarchical
Variational Distillation for Multimodal Emotion Recognition in Conversation" (arXiv 2411.10060) from
the paper's description; the authors' code is not public. The forward pass reads top to bottom:

1. input projection of every modality to the hidden width, plus speaker and position context;
2. Modality Reconstruction: a small 1-D conv U-Net along the dialogue axis whose bottleneck code is the
   modality's representation from then on ("rec" loss: reconstruct the raw input features);
3. CMA-Transformer: the central modality attends to itself and, through gated cross-attention, to each
   auxiliary modality, which has its own self-attention context encoder -> fine-grained representations;
4. variational fusion: a product of Gaussian experts (one per available modality, plus a N(0, I) prior)
   -> the coarse-grained representation ("vae" loss: KL to the prior);
5. hierarchical distillation: the fused classifier (teacher) supervises the per-modality classifiers
   (students) at the logit level ("kd") and the coarse representation supervises the fine ones at the
   feature level ("feat"); "ce" and "uni" are the fused and per-modality cross-entropies.

Every component is switchable by one config flag; a disabled component has no parameters and no loss
term. Choices the paper leaves open, and that are therefore ours, are marked "Ours:" below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.batch import IGNORE_LABEL, DialogueBatch
from model.common import DialogueModelOutput, checked_input_dims, is_int, is_number

FUSION_METHODS = ("poe", "concat")
LOSS_NAMES = ("ce", "uni", "kd", "feat", "rec", "vae")
# Ours: bounds on every expert's log-variance, so precisions stay within [e^-8, e^8] (finite in float32).
LOGVAR_MIN, LOGVAR_MAX = -8.0, 8.0
_FLAGS = (
    "use_speaker_embedding", "use_positional_encoding", "use_reconstruction", "use_cross_modal_attention",
    "use_logit_distillation", "use_feature_distillation", "use_unimodal_losses", "use_relative_positions",
)


@dataclass
class CMATHConfig:
    """Everything that defines a CMATH model; JSON-able through to_dict()/from_dict() for checkpoints.

    Each use_* flag (and fusion="concat") is one ablation: switching it off removes that component's
    parameters and its loss term.
    """

    input_dims: dict[str, int]  # modality -> feature width, e.g. {"text": 1024, "audio": 1024, "face": 512}
    num_classes: int
    num_speakers: int
    hidden_size: int = 256  # D: width of every stream
    num_layers: int = 2  # L: CMA-Transformer depth (and depth of each auxiliary context encoder)
    num_heads: int = 4
    intermediate_size: int | None = None  # feed-forward width; None = 2 * hidden_size
    dropout: float = 0.1
    central_modality: str = "text"
    use_speaker_embedding: bool = True
    use_positional_encoding: bool = True  # sinusoidal over the position in the dialogue (no parameters)
    use_relative_positions: bool = True  # Ours: a learned per-head attention bias by turn distance
    max_relative_distance: int = 8  # turn distances beyond this share one bias
    use_reconstruction: bool = True
    reconstruction_width: int | None = None  # width of the compressed code; None = hidden_size // 2
    use_cross_modal_attention: bool = True  # False: every stream is a plain self-attention encoder
    fusion: str = "poe"  # "poe": variational product of experts; "concat": concatenation + MLP
    use_logit_distillation: bool = True
    use_feature_distillation: bool = True
    use_unimodal_losses: bool = True
    temperature: float = 2.0  # logit-distillation temperature
    w_uni: float = 1.0
    w_kd: float = 0.5
    w_feat: float = 0.5
    w_rec: float = 0.5
    # Ours: 0.001; at 0.01 the KL pulled the fused representation to the prior and cost 1.5 points of
    # test weighted F1 on real MELD text (bench/real_meld.py, 3 seeds: 0.424 -> 0.439)
    w_vae: float = 0.001
    class_weights: list[float] | None = None  # per-class weights of "ce" and "uni"

    def __post_init__(self) -> None:
        self.input_dims = checked_input_dims(self.input_dims)
        if self.central_modality not in self.input_dims:
            raise ValueError(
                f"central_modality {self.central_modality!r} is not one of the modalities in input_dims "
                f"{list(self.input_dims)}"
            )
        if not is_int(self.num_classes) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        min_speakers = 1 if self.use_speaker_embedding else 0
        if not is_int(self.num_speakers) or self.num_speakers < min_speakers:
            raise ValueError(
                f"num_speakers must be an integer >= {min_speakers} (use_speaker_embedding="
                f"{self.use_speaker_embedding}), got {self.num_speakers!r}"
            )
        for name in ("hidden_size", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.intermediate_size is not None and (not is_int(self.intermediate_size) or self.intermediate_size <= 0):
            raise ValueError(f"intermediate_size must be a positive integer or None, got {self.intermediate_size!r}")
        if self.reconstruction_width is not None and (
            not is_int(self.reconstruction_width) or not 0 < self.reconstruction_width <= self.hidden_size
        ):
            raise ValueError(
                f"reconstruction_width must be an integer in [1, hidden_size={self.hidden_size}] (it is a "
                f"compression) or None, got {self.reconstruction_width!r}"
            )
        if not is_int(self.max_relative_distance) or self.max_relative_distance < 1:
            raise ValueError(f"max_relative_distance must be a positive integer, got {self.max_relative_distance!r}")
        if not is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.fusion not in FUSION_METHODS:
            raise ValueError(f"fusion must be one of {FUSION_METHODS}, got {self.fusion!r}")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not is_number(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        for name in ("w_uni", "w_kd", "w_feat", "w_rec", "w_vae"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.class_weights is not None:
            weights = list(self.class_weights)
            if len(weights) != self.num_classes:
                raise ValueError(
                    f"class_weights has {len(weights)} entries but num_classes is {self.num_classes}"
                )
            if not all(is_number(w) and w >= 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"class_weights must be finite numbers >= 0, not all zero, got {weights!r}")
            self.class_weights = [float(w) for w in weights]

    @property
    def modalities(self) -> list[str]:
        return list(self.input_dims)

    @property
    def auxiliary_modalities(self) -> list[str]:
        return [m for m in self.input_dims if m != self.central_modality]

    @property
    def compressed_width(self) -> int:
        return self.reconstruction_width if self.reconstruction_width is not None else max(1, self.hidden_size // 2)

    @property
    def relative_distance_window(self) -> int:
        """max_relative_distance when relative positions are on, else 0 (no bias)."""
        return self.max_relative_distance if self.use_relative_positions else 0

    @property
    def feedforward_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 2 * self.hidden_size

    @property
    def loss_weights(self) -> dict[str, float]:
        return {
            "ce": 1.0, "uni": self.w_uni, "kd": self.w_kd, "feat": self.w_feat, "rec": self.w_rec, "vae": self.w_vae,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CMATHConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown CMATHConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)


@dataclass
class CMATHOutput(DialogueModelOutput):
    """What forward() returns: every model's output (`model.common`) plus CMATH's representations.
    B dialogues, N utterances, C classes.

    logits:              [B, N, C] fused classifier; the prediction is its argmax
    modality_logits:     {modality: [B, N, C]}; empty when neither "uni" nor "kd" is enabled
    losses:              {name: scalar}, the enabled terms only, each unweighted and >= 0
    loss:                the weighted total, or None when the batch has no usable label
    fine_representations: {modality: [B, N, D]} CMA-Transformer outputs
    coarse_representation: [B, N, D] fused representation fed to the fused classifier
    """

    fine_representations: dict[str, torch.Tensor] = field(default_factory=dict)
    coarse_representation: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def sinusoidal_positions(length: int, width: int, device: torch.device) -> torch.Tensor:
    """[length, width] sinusoidal encoding of the utterance's position in the dialogue (Vaswani et al.)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    encoding = torch.zeros(length, width, device=device)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return encoding


class InputProjection(nn.Module):
    """Maps one modality's features to the shared width D (Linear + LayerNorm + dropout)."""

    def __init__(self, input_dim: int, hidden_size: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(input_dim, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.linear(features)))


class ModalityReconstruction(nn.Module):
    """A two-level 1-D conv U-Net along the dialogue axis: D -> mid -> code (r) -> mid (+ skip) -> D -> D_m.

    Ours: compression is over channels only (kernel 3, stride 1, no pooling), so every utterance keeps
    its own code; a stride-2 bottleneck would merge neighbouring utterances, but each utterance needs a
    representation of its own downstream. mid = (D + r) // 2. The skip connection joins the first
    encoder level to the first decoder level, as in U-Net. Positions that are padding or where the
    modality is unavailable are zeroed before every convolution, so no conv reads them.
    The code, projected back to D, is the modality's representation from here on; the decoder output is
    projected to the raw feature width D_m for the "rec" loss.
    """

    def __init__(self, hidden_size: int, compressed_width: int, input_dim: int):
        super().__init__()
        middle = (hidden_size + compressed_width) // 2
        self.encoder_in = nn.Conv1d(hidden_size, middle, kernel_size=3, padding=1)
        self.encoder_code = nn.Conv1d(middle, compressed_width, kernel_size=3, padding=1)
        self.decoder_in = nn.Conv1d(compressed_width, middle, kernel_size=3, padding=1)
        self.decoder_out = nn.Conv1d(2 * middle, hidden_size, kernel_size=3, padding=1)
        self.to_features = nn.Linear(hidden_size, input_dim)
        self.code_to_hidden = nn.Linear(compressed_width, hidden_size)

    def forward(self, hidden: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, N, D], present [B, N] -> (representation [B, N, D], reconstructed features [B, N, D_m])."""
        keep = present.unsqueeze(1).to(hidden.dtype)  # [B, 1, N], broadcast over channels
        channels_first = hidden.transpose(1, 2) * keep
        encoded = F.gelu(self.encoder_in(channels_first)) * keep
        code = self.encoder_code(encoded) * keep  # linear bottleneck
        decoded = F.gelu(self.decoder_in(code)) * keep
        decoded = F.gelu(self.decoder_out(torch.cat([decoded, encoded], dim=1))) * keep
        reconstructed = self.to_features(decoded.transpose(1, 2))
        representation = self.code_to_hidden(code.transpose(1, 2)) * keep.transpose(1, 2)
        return representation, reconstructed


def relative_distances(num_queries: int, num_keys: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """long [Nq, Nk]: key turn minus query turn, clipped to [-max_distance, max_distance], shifted to >= 0
    (an index into the 2 * max_distance + 1 learned biases)."""
    query_turns = torch.arange(num_queries, device=device).unsqueeze(1)
    key_turns = torch.arange(num_keys, device=device).unsqueeze(0)
    return (key_turns - query_turns).clamp(-max_distance, max_distance) + max_distance


class MaskedAttention(nn.Module):
    """Multi-head attention whose rows without any valid key return zeros instead of NaN, optionally
    with a learned bias per head and turn distance added to the attention scores.

    Ours (use_relative_positions): the sinusoidal position alone left the context encoder no better
    than an utterance-level model on real MELD text (bench/real_meld.py); a per-head bias by clipped
    turn distance (T5 / Shaw-style relative positions, initialised at zero, so training starts from
    plain attention) lets a head prefer the neighbouring turns, as a recurrent model does by design.

    Softmax over an all-masked row is 0/0 in PyTorch. That happens whenever a dialogue has no utterance
    with some modality (a MELD dialogue where no face was detected), so for those rows every key is
    unmasked to keep the arithmetic finite and the result is then zeroed: with the residual connection
    around the attention, a zero update is a no-op.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, max_relative_distance: int = 0):
        super().__init__()
        self.num_heads = num_heads
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.max_relative_distance = max_relative_distance
        self.relative_bias = None
        if max_relative_distance > 0:
            self.relative_bias = nn.Embedding(2 * max_relative_distance + 1, num_heads)
            nn.init.zeros_(self.relative_bias.weight)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """query [B, Nq, D], key_value [B, Nk, D], key_valid [B, Nk] (True = may be attended to)."""
        has_key = key_valid.any(dim=1)
        ignore = ~key_valid & has_key.unsqueeze(1)
        if self.relative_bias is None:
            attended, _ = self.attention(query, key_value, key_value, key_padding_mask=ignore, need_weights=False)
        else:
            batch, num_queries, num_keys = query.shape[0], query.shape[1], key_value.shape[1]
            distances = relative_distances(num_queries, num_keys, self.max_relative_distance, query.device)
            bias = self.relative_bias(distances).permute(2, 0, 1).to(query.dtype)  # [H, Nq, Nk]
            # one float mask carries both the bias and the ignored keys (-inf), per dialogue and head
            score_bias = bias.unsqueeze(0).expand(batch, -1, -1, -1).masked_fill(ignore[:, None, None, :], float("-inf"))
            attended, _ = self.attention(
                query, key_value, key_value, need_weights=False,
                attn_mask=score_bias.reshape(batch * self.num_heads, num_queries, num_keys),
            )
        return attended * has_key[:, None, None].to(attended.dtype)


class FeedForward(nn.Sequential):
    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float):
        super().__init__(
            nn.Linear(hidden_size, intermediate_size), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(intermediate_size, hidden_size),
        )


class ContextEncoderLayer(nn.Module):
    """Pre-LN Transformer encoder layer (self-attention + feed-forward) over the dialogue.

    Ours: pre-LN (LayerNorm before each sub-block, residual around it) rather than post-LN: it trains
    without learning-rate warm-up, and the stream gets a final LayerNorm after the last layer.
    """

    def __init__(self, config: CMATHConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.self_attention = MaskedAttention(
            config.hidden_size, config.num_heads, config.dropout, config.relative_distance_window
        )
        self.feedforward_norm = nn.LayerNorm(config.hidden_size)
        self.feedforward = FeedForward(config.hidden_size, config.feedforward_size, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        normed = self.attention_norm(hidden)
        hidden = hidden + self.dropout(self.self_attention(normed, normed, valid))
        return hidden + self.dropout(self.feedforward(self.feedforward_norm(hidden)))


class CrossModalityAugmentedLayer(nn.Module):
    """One layer of the central stream: self-attention, then gated cross-attention to every auxiliary.

    For each auxiliary m the central stream (query) attends to m (keys/values), and a sigmoid gate
    computed from [central; cross_m] decides per feature how much of cross_m is added. Ours: the
    auxiliaries augment the central stream in parallel (all from the same post-self-attention state, the
    gated updates summed), so the result does not depend on the order of the modalities.
    """

    def __init__(self, config: CMATHConfig):
        super().__init__()
        size = config.hidden_size
        self.attention_norm = nn.LayerNorm(size)
        self.self_attention = MaskedAttention(size, config.num_heads, config.dropout, config.relative_distance_window)
        self.cross_query_norm = nn.LayerNorm(size)
        self.cross_key_value_norms = nn.ModuleDict({m: nn.LayerNorm(size) for m in config.auxiliary_modalities})
        self.cross_attention = nn.ModuleDict(
            {
                m: MaskedAttention(size, config.num_heads, config.dropout, config.relative_distance_window)
                for m in config.auxiliary_modalities
            }
        )
        self.cross_gates = nn.ModuleDict({m: nn.Linear(2 * size, size) for m in config.auxiliary_modalities})
        self.feedforward_norm = nn.LayerNorm(size)
        self.feedforward = FeedForward(size, config.feedforward_size, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        central: torch.Tensor,
        central_valid: torch.Tensor,
        auxiliaries: dict[str, torch.Tensor],
        auxiliary_valid: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        normed = self.attention_norm(central)
        central = central + self.dropout(self.self_attention(normed, normed, central_valid))
        query = self.cross_query_norm(central)
        augmentation = torch.zeros_like(central)
        for modality, auxiliary in auxiliaries.items():
            key_value = self.cross_key_value_norms[modality](auxiliary)
            cross = self.cross_attention[modality](query, key_value, auxiliary_valid[modality])
            gate = torch.sigmoid(self.cross_gates[modality](torch.cat([query, cross], dim=-1)))
            augmentation = augmentation + gate * cross
        central = central + self.dropout(augmentation)
        return central + self.dropout(self.feedforward(self.feedforward_norm(central)))


class CrossModalityAugmentedTransformer(nn.Module):
    """Asymmetric encoder: a central stream augmented by the auxiliary streams -> one fine representation each.

    Each auxiliary has its own L-layer self-attention context encoder. Ours: the streams advance in
    lockstep, so central layer l cross-attends to the auxiliaries' layer-l outputs. Keys are limited to
    utterances that are real AND have the stream's modality, in every stream (the central one included:
    an utterance without the central modality carries only speaker and position, no content to attend
    to); its query still gets a representation from context.
    With use_cross_modal_attention=False the central stream is one more plain context encoder.
    """

    def __init__(self, config: CMATHConfig):
        super().__init__()
        self.central_modality = config.central_modality
        self.auxiliary_modalities = config.auxiliary_modalities
        # a single-modality model has nothing to cross-attend to: its central stream is a plain encoder
        self.use_cross_modal_attention = config.use_cross_modal_attention and bool(self.auxiliary_modalities)
        self.auxiliary_layers = nn.ModuleDict(
            {
                m: nn.ModuleList(ContextEncoderLayer(config) for _ in range(config.num_layers))
                for m in self.auxiliary_modalities
            }
        )
        central_layer = CrossModalityAugmentedLayer if self.use_cross_modal_attention else ContextEncoderLayer
        self.central_layers = nn.ModuleList(central_layer(config) for _ in range(config.num_layers))
        self.final_norms = nn.ModuleDict({m: nn.LayerNorm(config.hidden_size) for m in config.modalities})

    def forward(self, hidden: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        central = hidden[self.central_modality]
        auxiliaries = {m: hidden[m] for m in self.auxiliary_modalities}
        for depth, central_layer in enumerate(self.central_layers):
            auxiliaries = {m: self.auxiliary_layers[m][depth](auxiliaries[m], valid[m]) for m in auxiliaries}
            if self.use_cross_modal_attention:
                central = central_layer(central, valid[self.central_modality], auxiliaries, valid)
            else:
                central = central_layer(central, valid[self.central_modality])
        streams = {self.central_modality: central, **auxiliaries}
        return {m: self.final_norms[m](streams[m]) for m in self.final_norms}


def product_of_experts(
    means: torch.Tensor, logvars: torch.Tensor, available: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of diagonal Gaussian experts and a N(0, I) prior expert.

    means, logvars [M, ..., D]; available [M, ...] bool. An unavailable expert contributes nothing, exactly
    as if it were left out: precision = 1 + sum_m available_m / var_m, mean = sum_m (mu_m / var_m) / precision.
    Returns (mean, logvar) of the product, [..., D].
    """
    use = available.unsqueeze(-1)
    expert_precision = torch.where(use, torch.exp(-logvars), torch.zeros_like(logvars))
    precision = 1.0 + expert_precision.sum(dim=0)
    weighted_means = torch.where(use, means * expert_precision, torch.zeros_like(means))
    return weighted_means.sum(dim=0) / precision, -torch.log(precision)


class VariationalFusion(nn.Module):
    """fusion="poe": each fine representation gives a Gaussian; their product is the coarse representation.

    A reparameterised sample in training, the mean in eval. Computed in float32 (precisions are
    exponentials). Ours: log-variances are hard-clamped to [LOGVAR_MIN, LOGVAR_MAX]; the latent width is D.
    """

    def __init__(self, config: CMATHConfig):
        super().__init__()
        size = config.hidden_size
        self.mean_heads = nn.ModuleDict({m: nn.Linear(size, size) for m in config.modalities})
        self.logvar_heads = nn.ModuleDict({m: nn.Linear(size, size) for m in config.modalities})

    def forward(
        self, fine: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (coarse [B, N, D], fused mean, fused logvar), the last two in float32."""
        modalities = list(self.mean_heads)
        means = torch.stack([self.mean_heads[m](fine[m]).float() for m in modalities])
        logvars = torch.stack(
            [self.logvar_heads[m](fine[m]).float().clamp(LOGVAR_MIN, LOGVAR_MAX) for m in modalities]
        )
        mean, logvar = product_of_experts(means, logvars, torch.stack([valid[m] for m in modalities]))
        coarse = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        return coarse.to(fine[modalities[0]].dtype), mean, logvar


class ConcatFusion(nn.Module):
    """fusion="concat" ablation: concatenate the fine representations (zeros where unavailable) + MLP."""

    def __init__(self, config: CMATHConfig):
        super().__init__()
        self.modalities = config.modalities
        self.mlp = nn.Sequential(
            nn.Linear(len(config.modalities) * config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
        )

    def forward(self, fine: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None, None]:
        parts = [torch.where(valid[m].unsqueeze(-1), fine[m], torch.zeros_like(fine[m])) for m in self.modalities]
        return self.mlp(torch.cat(parts, dim=-1)), None, None


# --------------------------------------------------------------------------------------------------
# Loss helpers: masked sums kept separate from counts so that empty selections average to 0, not NaN
# --------------------------------------------------------------------------------------------------


def _sum_and_count(
    values: torch.Tensor, where: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of values over `where` (optionally weighted), total weight), both float32 scalars."""
    selected = where.float() if weights is None else where.float() * weights.float()
    return torch.where(where, values.float() * selected, 0.0).sum(), selected.sum()


def _average(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over modalities of each modality's own average; modalities with nothing selected are left out."""
    sums = torch.stack([s for s, _ in terms])
    counts = torch.stack([c for _, c in terms])
    present = (counts > 0).float()
    per_modality = sums / counts.clamp_min(1e-12)
    return ((per_modality * present).sum() / present.sum().clamp_min(1.0)).clamp_min(0.0)


def gaussian_kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the last dimension."""
    return 0.5 * (torch.exp(logvar) + mean.pow(2) - 1.0 - logvar).sum(dim=-1)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD term per utterance: KL(teacher_T || student_T) * T^2 (teacher must already be detached)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="none").sum(dim=-1) * temperature**2


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class CMATH(nn.Module):
    """Cross-Modality Augmented Transformer with Hierarchical Variational Distillation; see the module docstring."""

    def __init__(self, config: CMATHConfig):
        super().__init__()
        self.config = config
        self.modalities = config.modalities
        size = config.hidden_size

        self.input_projections = nn.ModuleDict(
            {m: InputProjection(dim, size, config.dropout) for m, dim in config.input_dims.items()}
        )
        self.speaker_embedding = None
        if config.use_speaker_embedding:
            # Ours: one speaker table shared by all modalities (who speaks does not depend on the modality).
            self.speaker_embedding = nn.Embedding(config.num_speakers, size)
            nn.init.normal_(self.speaker_embedding.weight, std=0.02)
        self.reconstruction = None
        if config.use_reconstruction:
            self.reconstruction = nn.ModuleDict(
                {m: ModalityReconstruction(size, config.compressed_width, dim) for m, dim in config.input_dims.items()}
            )
        self.encoder = CrossModalityAugmentedTransformer(config)
        self.fusion = VariationalFusion(config) if config.fusion == "poe" else ConcatFusion(config)
        self.fused_classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(size, config.num_classes))
        # The per-modality classifiers serve both "uni" and "kd": they exist when either is on.
        self.modality_classifiers = None
        if config.use_unimodal_losses or config.use_logit_distillation:
            self.modality_classifiers = nn.ModuleDict(
                {
                    m: nn.Sequential(nn.Dropout(config.dropout), nn.Linear(size, config.num_classes))
                    for m in self.modalities
                }
            )
        self.feature_projections = None
        if config.use_feature_distillation:
            self.feature_projections = nn.ModuleDict({m: nn.Linear(size, size) for m in self.modalities})
        class_weights = torch.tensor(config.class_weights) if config.class_weights is not None else None
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, batch: DialogueBatch) -> CMATHOutput:
        config = self.config
        self._check_batch(batch)
        mask = batch.mask.bool()
        # valid[m]: the utterance is real and has modality m
        valid = {m: mask & batch.available[m].bool() for m in self.modalities}
        losses: dict[str, torch.Tensor] = {}

        # 1-2. Input projection, Modality Reconstruction, speaker and position context
        context = self._dialogue_context(batch.speakers, mask.shape[1], mask.device)
        hidden: dict[str, torch.Tensor] = {}
        reconstruction_terms = []
        for m in self.modalities:
            features = batch.features[m]
            keep = valid[m].unsqueeze(-1)
            projected = torch.where(keep, self.input_projections[m](features), 0.0)
            if self.reconstruction is not None:
                projected, reconstructed = self.reconstruction[m](projected, valid[m])
                squared_error = (reconstructed.float() - features.float()).pow(2).mean(dim=-1)
                reconstruction_terms.append(_sum_and_count(squared_error, valid[m]))
            hidden[m] = projected if context is None else projected + context.to(projected.dtype)

        # 3. CMA-Transformer -> fine-grained representations
        fine = self.encoder(hidden, valid)

        # 4. Fusion -> coarse-grained representation, fused (teacher) classifier
        coarse, fused_mean, fused_logvar = self.fusion(fine, valid)
        logits = self.fused_classifier(coarse)
        modality_logits = {}
        if self.modality_classifiers is not None:
            modality_logits = {m: self.modality_classifiers[m](fine[m]) for m in self.modalities}

        # 5. Losses, all in float32
        labeled = mask & (batch.labels != IGNORE_LABEL)
        has_labels = bool(labeled.any())
        labels = batch.labels.masked_fill(~labeled, 0)
        if has_labels:
            losses["ce"] = _average([self._cross_entropy(logits, labels, labeled)])
            if config.use_unimodal_losses:
                losses["uni"] = _average(
                    [self._cross_entropy(modality_logits[m], labels, labeled & valid[m]) for m in self.modalities]
                )
        if config.use_logit_distillation:
            # The fused classifier is the teacher: detached, so "kd" trains only the students.
            teacher = logits.detach()
            losses["kd"] = _average(
                [
                    _sum_and_count(distillation_kl(modality_logits[m], teacher, config.temperature), valid[m])
                    for m in self.modalities
                ]
            )
        if self.feature_projections is not None:
            # Ours: the coarse representation is the teacher (detached, its mean under "poe", so the target is
            # not sampling noise); detaching keeps "feat" from pulling the fused representation to each modality.
            target = (fused_mean if fused_mean is not None else coarse).detach().float()
            distances = {
                m: 1.0 - F.cosine_similarity(self.feature_projections[m](fine[m]).float(), target, dim=-1)
                for m in self.modalities
            }
            losses["feat"] = _average([_sum_and_count(distances[m], valid[m]) for m in self.modalities])
        if reconstruction_terms:
            losses["rec"] = _average(reconstruction_terms)
        if fused_mean is not None:
            losses["vae"] = _average([_sum_and_count(gaussian_kl_to_standard_normal(fused_mean, fused_logvar), mask)])

        loss = None
        if has_labels:
            weights = config.loss_weights
            loss = sum(weights[name] * value for name, value in losses.items())
        return CMATHOutput(
            logits=logits,
            modality_logits=modality_logits,
            losses=losses,
            loss=loss,
            fine_representations=fine,
            coarse_representation=coarse,
        )

    def _dialogue_context(self, speakers: torch.Tensor, length: int, device: torch.device) -> torch.Tensor | None:
        """Speaker embedding + sinusoidal position in the dialogue, [B, N, D] (or [1, N, D]); None if both are off."""
        context = None
        if self.speaker_embedding is not None:
            context = self.speaker_embedding(speakers)
        if self.config.use_positional_encoding:
            positions = sinusoidal_positions(length, self.config.hidden_size, device).unsqueeze(0)
            context = positions if context is None else context + positions
        return context

    def _cross_entropy(
        self, logits: torch.Tensor, labels: torch.Tensor, where: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-weighted cross-entropy (sum, total weight) over `where`, as F.cross_entropy(weight=...) averages it."""
        per_utterance = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        per_utterance = per_utterance.view_as(labels)
        weights = self.class_weights[labels] if self.class_weights is not None else None
        return _sum_and_count(per_utterance, where, weights)

    def _check_batch(self, batch: DialogueBatch) -> None:
        """Clear errors for a batch that does not fit this model (modalities, widths, shapes, speaker ids)."""
        shape = tuple(batch.mask.shape)
        if len(shape) != 2:
            raise ValueError(f"batch.mask must be [B, N], got shape {shape}")
        for m in self.modalities:
            if m not in batch.features or m not in batch.available:
                raise ValueError(
                    f"the model needs modality {m!r} but the batch has features {sorted(batch.features)} "
                    f"and available {sorted(batch.available)}"
                )
            features = batch.features[m]
            expected = shape + (self.config.input_dims[m],)
            if tuple(features.shape) != expected:
                raise ValueError(
                    f"batch.features[{m!r}] has shape {tuple(features.shape)}, expected {expected} "
                    f"(input_dims[{m!r}] = {self.config.input_dims[m]})"
                )
            if tuple(batch.available[m].shape) != shape:
                raise ValueError(
                    f"batch.available[{m!r}] has shape {tuple(batch.available[m].shape)}, expected {shape}"
                )
        for name in ("speakers", "labels"):
            if tuple(getattr(batch, name).shape) != shape:
                raise ValueError(f"batch.{name} has shape {tuple(getattr(batch, name).shape)}, expected {shape}")
        if self.speaker_embedding is not None and batch.speakers.numel():
            speakers = batch.speakers.masked_fill(~batch.mask.bool(), 0)
            low, high = int(speakers.min()), int(speakers.max())
            if low < 0 or high >= self.config.num_speakers:
                raise ValueError(
                    f"speaker ids must be in [0, num_speakers={self.config.num_speakers}), the batch has {low}..{high}"
                )


__all__ = [
    "CMATH",
    "CMATHConfig",
    "CMATHOutput",
    "FUSION_METHODS",
    "LOSS_NAMES",
    "product_of_experts",
    "gaussian_kl_to_standard_normal",
    "distillation_kl",
]
