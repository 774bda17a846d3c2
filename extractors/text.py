"""What every text extractor reads from a manifest row: the utterance's own text, and its dialogue context.

Shared by the text extractors (`hf_text`, `tfidf`) so that they agree on which rows have text and on
what the context of an utterance is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any


def utterance_text(row: dict[str, Any]) -> str:
    """The text a row is encoded (and fitted) from; "" when the row has none (missing `empty_text`)."""
    return (row.get("text") or "").strip() if row.get("has_text", True) else ""


def dialogue_contexts(rows: Sequence[dict[str, Any]], window: int) -> dict[str, str]:
    """Each utterance's context: the previous `window` non-empty turns of its dialogue, in dialogue
    order, each as "Speaker: text", joined by spaces ("" for the first turn, or when `window` is 0)."""
    contexts: dict[str, str] = {}
    if window == 0:
        return contexts
    dialogues: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        dialogues[row["dialogue_id"]].append(row)
    for turns in dialogues.values():
        turns.sort(key=lambda r: r["turn_index"])
        history: list[str] = []
        for row in turns:
            contexts[row["utterance_id"]] = " ".join(history[-window:])
            text = utterance_text(row)
            if text:
                history.append(f"{row['speaker']}: {text}")
    return contexts
