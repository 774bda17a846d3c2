"""Progress bars that show on a terminal and stay out of CI logs and redirected output."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """`items` wrapped in a tqdm bar on stderr, or unwrapped when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return items
    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)
