"""openSMILE acoustic features (audEERING's `opensmile` package): the standard paralinguistic baselines.

Feature sets (`feature_set`), at 16 kHz on the same decoded waveform as every other audio extractor
(`extractors.audio.utterance_audio`: the same span, mono, soxr-resampled):

- ``eGeMAPSv02``: the extended Geneva Minimalistic Acoustic Parameter Set (pitch, loudness, jitter,
  shimmer, formants, spectral balance, temporal rates); 88 functionals, 25 low-level descriptors;
- ``ComParE_2016``: the Interspeech ComParE brute-force set; 6373 functionals, 65 descriptors.

Levels (`level`): ``functionals`` is the set's own utterance-level vector (88 / 6373 values, as
published); ``lld_mean_std`` takes the low-level descriptors (one row per 10 ms frame) and stores
their mean and population std over all frames, concatenated (50 / 130 values): a smaller summary
for sets whose functionals are too wide for a small corpus.

Where openSMILE runs: in the decoder, i.e. in the DataLoader worker processes; `encode` only wraps
the vector in a tensor. openSMILE is single-threaded CPU work with no weights, and it is the whole
cost: measured on the demo (1.1 s utterances, a loaded 2-core machine) about 80-110 ms per utterance
(a fixed 30-60 ms, as the package parses the config into a fresh native instance on every call, plus
30-45 ms per second of audio), against 1.4 ms to read an IEMOCAP wav and 13 ms for a MELD mp4 track.
In `num_workers` processes it uses that many cores, where `encode` in the main process would run one
utterance after another on one core; workers also send back 88 floats instead of a waveform (on the
120-utterance demo, on that loaded machine, 2 workers were no faster than 0: worker start-up and each
worker's first Smile, about 0.4 s, weigh as much as the work there). The
`Smile` object holds only the config (no model) but wraps a native library, so each worker builds its
own on first use and the decoder pickles without it.

Edge cases, each a finite feature or one short missing reason:

- a row without audio: the reason from `extractors.audio` (`no_audio_stream`, `missing_clip`, ...);
- audio shorter than the set's first analysis frame (60 ms at 16 kHz for both sets): openSMILE
  emits no frame and the package fills every value with NaN; that utterance is missing
  ``too_short_for_opensmile`` (a NaN vector says nothing about it, and NaN must not reach the store);
- some but not all values NaN or inf (never seen on the demo or synthetic test audio, but
  openSMILE does not promise otherwise): those values are set to 0 and the feature is flagged ``opensmile_non_finite``;
- short (``audio_too_short``) and silent (``silent_audio``) audio keep their feature with the flag;
  all-zero audio gives finite openSMILE values (zeros and floors), so silence is never missing;
- samples are clipped to [-1, 32767/32768] first: the package scales by 32768 into int16, which
  would wrap a full-scale +1.0 to -32768.

Determinism: openSMILE is deterministic C++ (no dithering in these configs), so the same samples give
bitwise the same float32 vector, whatever the batch, worker count or process (tested).

Lineage: the feature set stands where a model stands. `model_id` is e.g. "opensmile 2.6.0
eGeMAPSv02 functionals"; `model_sha256` hashes the package version and every config file the set
reads inside the installed package (its .conf, the .inc files it includes, and `shared/`, whence
the package takes the source, sink and buffer settings), so another openSMILE release or an edited
config is another store.

The stored dtype defaults to float32: ComParE functionals reach magnitudes (about 1e12 on the demo)
that overflow a float16 store (the store then refuses the shard), and eGeMAPS values (up to a few
thousand) keep only 3-4 digits in float16.

Licence: the `opensmile` package and its configs are audEERING's, free for research and education
only; commercial use needs a licence from audEERING (https://audeering.com).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import opensmile
import torch

from extractors.audio import AudioInputConfig, AudioUnavailable, audio_flags, audio_seconds, utterance_audio
from extractors.base import Decoded, Decoder, Encoded, Extractor, register_extractor
from pipeline.core.params import require_choice

SAMPLING_RATE = 16_000
FEATURE_SETS = {"eGeMAPSv02": opensmile.FeatureSet.eGeMAPSv02, "ComParE_2016": opensmile.FeatureSet.ComParE_2016}
LEVELS = ("functionals", "lld_mean_std")
TOO_SHORT = "too_short_for_opensmile"
NON_FINITE = "opensmile_non_finite"
_INT16_MAX = 32767 / 32768  # the largest sample the package's int16 conversion keeps in range
_CONFIG_ROOT = Path(opensmile.__file__).resolve().parent / "core" / "config"
# `\{path}` includes a file; `\cm[name{default}:...]` names an option whose default may be a file
_INCLUDE = re.compile(r"\\\{([^\\}][^}]*)\}")
_OPTION_DEFAULT = re.compile(r"\\cm\[\w+\{([^}]*)\}")


@dataclass
class OpenSmileConfig(AudioInputConfig):
    """params.yaml `extract.<set>` with `extractor: opensmile`."""

    dtype: str = "float32"  # see the module docstring: float16 overflows on ComParE
    feature_set: str = "eGeMAPSv02"  # eGeMAPSv02 | ComParE_2016
    level: Literal["functionals", "lld_mean_std"] = "functionals"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.feature_set, FEATURE_SETS, "feature_set")
        require_choice(self.level, LEVELS, "level")


def config_files(feature_set: str) -> list[Path]:
    """Every config file `feature_set` reads: its .conf, the files it includes (recursively, with
    options' file defaults), and the package's shared/ folder; sorted, all under the config root."""
    root = _CONFIG_ROOT.resolve()
    todo = [root / f"{FEATURE_SETS[feature_set].value}.conf", *sorted((root / "shared").iterdir())]
    seen: set[Path] = set()
    while todo:
        path = todo.pop().resolve()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        text = path.read_text(encoding="utf-8", errors="replace")
        for ref in _INCLUDE.findall(text) + _OPTION_DEFAULT.findall(text):
            if ref and ref != "?":
                todo.append(path.parent / ref)
    return sorted(seen)


def config_sha256(feature_set: str) -> str:
    """SHA-256 of "opensmile <version>" and one "<sha256>  <path>" line per config file (sha256sum style)."""
    lines = [f"opensmile {opensmile.__version__}\n"]
    for path in config_files(feature_set):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(_CONFIG_ROOT.resolve()).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def make_smile(feature_set: str, level: str) -> opensmile.Smile:
    """A Smile for the set at the level it computes (functionals, or the LLDs we summarise)."""
    levels = opensmile.FeatureLevel
    smile_level = levels.Functionals if level == "functionals" else levels.LowLevelDescriptors
    return opensmile.Smile(feature_set=FEATURE_SETS[feature_set], feature_level=smile_level, num_workers=1)


def smile_vector(smile: opensmile.Smile, audio: np.ndarray, level: str) -> np.ndarray:
    """openSMILE on mono 16 kHz float32 samples -> one float32 vector; NaN/inf passed through (see `finite_feature`)."""
    signal = np.clip(audio, -1.0, _INT16_MAX).astype(np.float32)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Segment too short, filling with NaN": handled by the caller
        out = np.asarray(smile(signal, SAMPLING_RATE))[0]  # [features, frames]
    if level == "functionals":
        return np.ascontiguousarray(out[:, 0], dtype=np.float32)
    frames = out.astype(np.float64)
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1)]).astype(np.float32)


def finite_feature(values: np.ndarray) -> tuple[np.ndarray | None, str | None, list[str]]:
    """(feature, missing reason, flags): all non-finite -> missing; some -> zeros there, flagged."""
    finite = np.isfinite(values)
    if not finite.any():
        return None, TOO_SHORT, []
    if finite.all():
        return values, None, []
    return np.where(finite, values, np.float32(0)).astype(np.float32), None, [NON_FINITE]


@dataclass
class OpenSmileDecoder(Decoder):
    """Manifest row -> openSMILE vector (see the module docstring for why it runs here)."""

    raw_root: Path
    config: OpenSmileConfig
    _smile: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the Smile (a native handle): each worker builds its own."""
        return {**self.__dict__, "_smile": None}

    @property
    def smile(self) -> opensmile.Smile:
        if self._smile is None:
            self._smile = make_smile(self.config.feature_set, self.config.level)
        return self._smile

    def __call__(self, row: dict[str, Any]) -> Decoded:
        uid = row["utterance_id"]
        try:
            audio = utterance_audio(row, self.raw_root, SAMPLING_RATE)
        except AudioUnavailable as exc:
            return Decoded(uid, missing=str(exc))
        flags = audio_flags(audio, self.config, SAMPLING_RATE)
        values, missing, more = finite_feature(smile_vector(self.smile, audio, self.config.level))
        if missing:
            return Decoded(uid, missing=missing, flags=flags)
        return Decoded(uid, data=values, flags=flags + more)


@register_extractor
class OpenSmileExtractor(Extractor):
    """eGeMAPS / ComParE acoustic features from openSMILE: no weights, computed in the decode workers."""

    name = "opensmile"
    modality = "audio"
    version = "1"
    config_class = OpenSmileConfig

    def __init__(self, config: OpenSmileConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        self.config: OpenSmileConfig = config

    @property
    def model_id(self) -> str:
        return f"opensmile {opensmile.__version__} {self.config.feature_set} {self.config.level}"

    @cached_property
    def model_sha256(self) -> str:
        return config_sha256(self.config.feature_set)

    @cached_property
    def output_dim(self) -> int:
        width = len(make_smile(self.config.feature_set, self.config.level).feature_names)
        return width if self.config.level == "functionals" else 2 * width

    def size_hint(self, row: dict[str, Any]) -> float:
        return audio_seconds(row)

    def decoder(self) -> OpenSmileDecoder:
        return OpenSmileDecoder(raw_root=self.raw_root, config=self.config)

    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        return [Encoded(d.utterance_id, torch.from_numpy(np.array(d.data, dtype=np.float32)), flags=list(d.flags))
                for d in batch]

