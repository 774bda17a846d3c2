"""Emotion prototypes: the learnable signal every demo utterance carries in every modality.

Each emotion gets class-specific words (text), a pitch band and loudness (audio) and a colour
tint and brightness of the face (video). Every utterance draws its own noise around the
prototype, so a model must learn the class from features rather than match a constant, yet the
classes stay far apart: f0 bands do not overlap and the tints are strong. An utterance whose
label is shuffled against its media therefore carries no signal a model could use.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
import skimage.data

SAMPLE_RATE = 16_000

# Rows/cols of skimage's astronaut photo that frame the face with some margin (MTCNN finds the
# face at about cols 181-268, rows 62-172 of the 512x512 image).
_FACE_ROWS = slice(30, 210)
_FACE_COLS = slice(150, 300)


def rng_for(seed: int, *parts: str | int) -> np.random.Generator:
    """An independent random stream per (seed, thing): adding one utterance never shifts another's noise."""
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


@dataclass(frozen=True)
class EmotionPrototype:
    name: str
    words: tuple[str, ...]
    f0_hz: float
    loudness: float
    tint_rgb: tuple[float, float, float]
    brightness: float


_CLASS_WORDS = {
    "neutral": ("okay", "fine", "sure", "alright", "usual", "normal"),
    "joy": ("great", "wonderful", "love", "happy", "lovely", "delighted"),
    "sadness": ("sad", "miss", "lonely", "cry", "heartbroken", "gloomy"),
    "anger": ("furious", "hate", "angry", "outrageous", "damn", "livid"),
    "fear": ("scared", "afraid", "terrified", "nervous", "panic", "frightened"),
    "disgust": ("gross", "disgusting", "nasty", "revolting", "yuck", "filthy"),
    "surprise": ("wow", "unbelievable", "whoa", "shocked", "unexpected", "astonishing"),
    "excited": ("awesome", "thrilled", "incredible", "yes", "fantastic", "ecstatic"),
    "frustrated": ("ugh", "annoying", "again", "whatever", "stuck", "pointless"),
}
# (f0 Hz, loudness, RGB tint, brightness). Neighbouring f0 bands lie >= 15 % apart, far beyond the
# +-3 % jitter; every tinted face was checked to stay detectable by MTCNN.
_VOICE_AND_FACE = {
    "neutral": (120.0, 0.20, (1.00, 1.00, 1.00), 1.00),
    "joy": (350.0, 0.40, (1.20, 1.20, 0.60), 1.15),
    "sadness": (95.0, 0.12, (0.55, 0.70, 1.20), 0.75),
    "anger": (215.0, 0.60, (1.35, 0.55, 0.50), 1.00),
    "fear": (255.0, 0.30, (0.75, 1.15, 0.95), 1.00),
    "disgust": (180.0, 0.25, (0.90, 1.05, 0.60), 0.95),
    "surprise": (300.0, 0.45, (1.20, 0.60, 1.25), 1.10),
    "excited": (410.0, 0.55, (1.30, 0.85, 0.45), 1.15),
    "frustrated": (150.0, 0.30, (0.85, 0.60, 1.10), 0.70),
}
PROTOTYPES: dict[str, EmotionPrototype] = {
    name: EmotionPrototype(name, words, *_VOICE_AND_FACE[name]) for name, words in _CLASS_WORDS.items()
}

# Shared filler: carries no class information, so text classes differ only in their own words.
# The real-punctuation characters (’ … —) are turned into the MELD release's mojibake later.
_FILLERS = (
    "you know", "I mean", "the thing is", "about the apartment", "right now", "with Ross",
    "at the coffee house", "tonight", "so", "um", "honestly", "I don’t know", "it’s", "that’s",
    "we’re going", "this morning", "the whole time", "after work", "listen", "look",
)
_ENDINGS = (".", "!", "?", "…", ".", "!")


def make_sentence(prototype: EmotionPrototype, rng: np.random.Generator) -> str:
    """Two class words among two to four shared fillers, in a shuffled order."""
    class_words = list(rng.choice(prototype.words, size=2, replace=False))
    fillers = list(rng.choice(_FILLERS, size=int(rng.integers(2, 5)), replace=False))
    parts = class_words + fillers
    order = rng.permutation(len(parts))
    body = " ".join(parts[i] for i in order)
    if rng.random() < 0.25:
        body = body.replace(" ", " — ", 1)
    return body[0].upper() + body[1:] + str(rng.choice(_ENDINGS))


def synthesize_voice(
    prototype: EmotionPrototype, duration_s: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A voiced harmonic tone with syllable-like bursts, pitched and scaled by the emotion.

    Returns float32 mono samples in [-1, 1].
    """
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = prototype.f0_hz * rng.uniform(0.97, 1.03)
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * t)
    declination = 1.0 - 0.05 * t / max(duration_s, 1e-6)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato * declination) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables_per_s = rng.uniform(3.0, 4.5)  # positive half-waves of the sine below
    envelope = np.clip(np.sin(2 * np.pi * syllables_per_s * t + rng.uniform(0, np.pi)), 0, None) ** 0.6
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
    loudness = prototype.loudness * rng.uniform(0.9, 1.1)
    voice = loudness * envelope * fade * tone / 2.3 + rng.normal(0.0, 0.005, n)
    return np.clip(voice, -1.0, 1.0).astype(np.float32)


@functools.cache
def _face_crop() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[_FACE_ROWS, _FACE_COLS])


def render_face(
    prototype: EmotionPrototype, height: int, rng: np.random.Generator, mirror: bool = False
) -> np.ndarray:
    """The astronaut's face scaled to `height` px, tinted and brightened by the emotion.

    Each call jitters the tint a little, so two faces of one class are similar, not identical.
    """
    crop = _face_crop()
    width = int(round(crop.shape[1] * height / crop.shape[0]))
    face = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    if mirror:
        face = face[:, ::-1]
    tint = np.asarray(prototype.tint_rgb, np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    face = face * tint * np.float32(prototype.brightness)
    return np.clip(face, 0, 255).astype(np.uint8)


def paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Copy `patch` into `canvas` at (top, left), clipped to the canvas."""
    height, width = canvas.shape[:2]
    top0, left0 = max(top, 0), max(left, 0)
    bottom, right = min(top + patch.shape[0], height), min(left + patch.shape[1], width)
    if bottom > top0 and right > left0:
        canvas[top0:bottom, left0:right] = patch[top0 - top : bottom - top, left0 - left : right - left]
