"""Errors a user can act on: each one names the file (and line) that is wrong."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """An error caused by the user's input; the CLI prints it on one line, without a traceback."""


class CorpusFormatError(PipelineError):
    """A raw corpus file does not have the layout or content its reader expects."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed, at most `limit` characters), for error messages."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or type(exc).__name__
