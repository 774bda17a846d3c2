"""Fingerprints of raw files, so a result can be traced back to (and checked against) its inputs.

Text and label files are small and their content defines the labels: size + SHA-256.
Media files are large: size + modification time, which is cheap and catches replacement.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Fingerprint:
    role: str  # what the file was read for: "labels", "transcript", "audio", "video"
    path: str  # relative to the corpus root
    size: int
    sha256: str | None = None  # text/label files
    mtime_ns: int | None = None  # media files

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=4096)
def _content_fingerprint(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def content_fingerprint(root: Path, path: Path, role: str) -> Fingerprint:
    """Size + content hash: for transcripts and label files."""
    stat = path.stat()
    digest = _content_fingerprint(path.resolve(), stat.st_size, stat.st_mtime_ns)
    return Fingerprint(role=role, path=relative_to_root(root, path), size=stat.st_size, sha256=digest)


def media_fingerprint(root: Path, path: Path, role: str) -> Fingerprint:
    """Size + mtime: for audio and video files."""
    stat = path.stat()
    return Fingerprint(
        role=role, path=relative_to_root(root, path), size=stat.st_size, mtime_ns=stat.st_mtime_ns
    )


def relative_to_root(root: Path, path: Path) -> str:
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def tree_digest(fingerprints: list[Fingerprint]) -> str:
    """One hash over the fingerprints of every raw file read: the raw tree's identity."""
    unique = {fp.path: fp.to_dict() for fp in fingerprints}
    blob = json.dumps([unique[p] for p in sorted(unique)], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()
