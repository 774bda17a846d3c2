"""A small generated corpus in the real MELD and IEMOCAP raw layouts, for offline runs and tests.

The real corpora cannot ship with the project, yet every stage from the raw readers to the
classifier should run end to end without them. `generate_demo_corpus` writes both layouts,
with the quirks of the real releases planted at known places, and a truth record
(`demo_corpus.json`) that says what a correct reader must find. Every utterance carries its
emotion in text, audio and face, so a model trained on features of the demo corpus scores far
above chance, and one trained on misaligned utterances does not.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.locks import output_lock
from pipeline.core.outputs import check_output
from pipeline.core.params import ParamError
from pipeline.demo.iemocap_layout import DEV_DIALOGUES, TEST_POOL, TRAIN_POOL, write_iemocap
from pipeline.demo.meld_layout import write_meld

STAGE = "demo-corpus"  # the `mer` subcommand, named by the output's marker
TRUTH_FILE = "demo_corpus.json"
TRUTH_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo corpus; the defaults give ~125 MELD rows and ~130 IEMOCAP turns in < 8 MB."""

    seed: int = 0
    meld_dialogues_train: int = 10
    meld_dialogues_dev: int = 3
    meld_dialogues_test: int = 4
    meld_utterances_per_dialogue: tuple[int, int] = (6, 9)
    iemocap_dialogues_train: int = 6
    iemocap_dialogues_dev: int = 3
    iemocap_dialogues_test: int = 3
    iemocap_turns_per_dialogue: tuple[int, int] = (10, 12)
    utterance_duration_s: tuple[float, float] = (0.8, 1.4)
    fps: int = 10
    meld_frame_size: tuple[int, int] = (320, 240)
    iemocap_frame_size: tuple[int, int] = (480, 180)

    def __post_init__(self) -> None:
        """Value rules; keys and types are checked before (pipeline.core.params.section_to_dataclass)."""
        # a config built in code may give lists; the record and the comparisons want tuples
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        _require_between(self, "seed", 0, 2**63 - 1)
        _require_between(self, "meld_dialogues_train", 2, 200)  # dialogue 0 has the guest, dialogue 1 the gap
        _require_between(self, "meld_dialogues_dev", 1, 200)
        _require_between(self, "meld_dialogues_test", 1, 200)
        _require_range(self, "meld_utterances_per_dialogue", 4, 40)  # utterance 2 is the gap
        # The first four train dialogues cover Sessions 1-4; the reader expects all five sessions.
        _require_between(self, "iemocap_dialogues_train", 4, len(TRAIN_POOL))
        _require_between(self, "iemocap_dialogues_dev", 1, len(DEV_DIALOGUES))
        _require_between(self, "iemocap_dialogues_test", 1, len(TEST_POOL))
        _require_range(self, "iemocap_turns_per_dialogue", 4, 60)
        _require_range(self, "utterance_duration_s", 0.5, 10.0)
        _require_between(self, "fps", 1, 60)
        meld_width, meld_height = _require_frame_size(self, "meld_frame_size")
        iemocap_width, iemocap_height = _require_frame_size(self, "iemocap_frame_size")
        # The face must stay >= ~80 px tall for MTCNN and fit its frame (or its half of the frame).
        if meld_height < 200 or meld_width < meld_height:
            raise ParamError(
                "meld_frame_size",
                f"must be at least 200 px high and no narrower than high, got {list(self.meld_frame_size)}",
                _CONTEXT,
            )
        if iemocap_height < 170 or iemocap_width % 4 or iemocap_width // 2 < 0.8 * iemocap_height:
            raise ParamError(
                "iemocap_frame_size",
                "must be at least 170 px high, a multiple of 4 wide, and each half at least 0.8 x the height "
                f"wide, got {list(self.iemocap_frame_size)}",
                _CONTEXT,
            )


def generate_demo_corpus(
    out_dir: Path, config: DemoConfig | None = None, params_file: Path | None = None, wait_s: float = 0.0
) -> dict[str, Any]:
    """Write the demo corpus to `out_dir` (replacing it only on success) and return its truth record.

    The same config always gives byte-identical files. The truth record is also written as
    `out_dir/demo_corpus.json`. `out_dir` must be absent, empty or an earlier demo corpus, and must
    not overlap `params_file` (the file the config came from), see `pipeline.core.outputs`. The run
    holds `out_dir`'s lock (`pipeline.core.locks`), waiting up to `wait_s` seconds for another run.
    """
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    check_output(out_dir, STAGE, [("--params", params_file)], option="OUT")
    with output_lock(out_dir, STAGE, wait_s), atomic_output_dir(out_dir, STAGE) as staging:
        meld_utterances, meld_quirks = write_meld(staging, config)
        iemocap_utterances, iemocap_quirks = write_iemocap(staging, config)
        utterances = meld_utterances + iemocap_utterances
        truth = {
            "format_version": TRUTH_FORMAT_VERSION,
            "seed": config.seed,
            "config": dataclasses.asdict(config),
            "counts": _counts(utterances),
            "utterances": utterances,
            "quirks": {"meld": meld_quirks, "iemocap": iemocap_quirks},
        }
        text = json.dumps(truth, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (staging / TRUTH_FILE).write_text(text, encoding="utf-8")
    return json.loads(text)


def _counts(utterances: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for utterance in utterances:
        corpus = counts.setdefault(utterance["corpus"], {"total": 0, "by_split": {}, "by_label": {}})
        corpus["total"] += 1
        corpus["by_split"][utterance["split"]] = corpus["by_split"].get(utterance["split"], 0) + 1
        corpus["by_label"][utterance["label"]] = corpus["by_label"].get(utterance["label"], 0) + 1
    return counts


_CONTEXT = "demo config: "  # the prefix of a rule's message when the config is built in code


def _require_between(config: DemoConfig, name: str, low: int, high: int) -> int:
    value = getattr(config, name)
    if not low <= value <= high:
        raise ParamError(name, f"must be an integer in [{low}, {high}], got {value!r}", _CONTEXT)
    return value


def _require_range(config: DemoConfig, name: str, low: float, high: float) -> None:
    value = getattr(config, name)
    if not low <= value[0] <= value[1] <= high:
        raise ParamError(name, f"must be a pair [min, max] with {low} <= min <= max <= {high}, got {list(value)}",
                         _CONTEXT)


def _require_frame_size(config: DemoConfig, name: str) -> tuple[int, int]:
    value = getattr(config, name)
    if not all(0 < v <= 1920 and v % 2 == 0 for v in value):
        raise ParamError(name, f"must be a pair [width, height] of even pixel counts up to 1920, got {list(value)}",
                         _CONTEXT)
    return value


__all__ = ["DemoConfig", "generate_demo_corpus"]
