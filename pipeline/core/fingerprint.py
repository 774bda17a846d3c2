"""Fingerprints of raw files, so a result can be traced back to (and checked against) its inputs.

Every file read is fingerprinted by size + SHA-256 of its content, computed once at prepare time:
content survives what a project meets in use (`dvc checkout`, `dvc pull` into a fresh clone, `cp`
or `rsync` without preserved times), where a modification time does not. Media files also record
their mtime, only as a shortcut: a check that finds the same size and mtime skips rereading a
clip; any other mtime falls back to the content hash.

Paths are kept as the user sees them under the root (lexically, symlinks not resolved), so a
session folder, a clip folder or a single clip linked from another disk, or DVC's symlink cache,
reads and records like a plain tree.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    role: str  # what the file was read for: "labels", "transcript", "audio", "video", "media"
    path: str  # relative to the corpus root, as seen under it
    size: int
    sha256: str | None = None  # every file (manifests written before content hashes of media: text files only)
    mtime_ns: int | None = None  # media files: the check's shortcut, never part of the identity

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What the file is, without when it was written: the part a copy or a checkout keeps."""
        if self.sha256 is None:  # an old media fingerprint: its mtime is all it has
            return self.to_dict()
        return {"role": self.role, "path": self.path, "size": self.size, "sha256": self.sha256}


def sha256_file(path: Path, chunk_size: int = CHUNK_BYTES) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=65536)
def _cached_sha256(real_path: str, size: int, mtime_ns: int) -> str:
    """One hash per file version within a process (readers may fingerprint a file more than once)."""
    return sha256_file(Path(real_path))


def content_fingerprint(root: Path, path: Path, role: str) -> Fingerprint:
    """Size + content hash: for transcripts and label files."""
    stat = path.stat()
    digest = _cached_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    return Fingerprint(role=role, path=relative_to_root(root, path), size=stat.st_size, sha256=digest)


def media_fingerprint(root: Path, path: Path, role: str) -> Fingerprint:
    """Size + content hash + mtime (the check's shortcut): for audio and video files."""
    stat = path.stat()
    digest = _cached_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    return Fingerprint(role=role, path=relative_to_root(root, path), size=stat.st_size, sha256=digest,
                       mtime_ns=stat.st_mtime_ns)


def fingerprint_problem(path: Path, recorded: dict, rehash: bool = False) -> str | None:
    """Why the file at `path` no longer matches its recorded fingerprint (a `Fingerprint.to_dict()`),
    or None when it does. Same size and mtime is taken as unchanged unless `rehash`."""
    if not path.is_file():
        return "is missing" if not path.is_symlink() else "is a broken symlink"
    stat = path.stat()
    if stat.st_size != recorded["size"]:
        return f"changed size ({recorded['size']} -> {stat.st_size} bytes)"
    mtime_kept = recorded.get("mtime_ns") is not None and stat.st_mtime_ns == recorded["mtime_ns"]
    if recorded.get("sha256"):
        if mtime_kept and not rehash:
            return None
        return None if sha256_file(path) == recorded["sha256"] else "changed content (sha256)"
    if not mtime_kept:  # a manifest from before media were hashed: mtime is all there is
        return ("was modified (mtime; this manifest predates content hashes of media, so a copy or checkout "
                "that lost the times shows too: rerun `mer prepare`)")
    return None


def relative_to_root(root: Path, path: Path) -> str:
    """`path` relative to `root`, lexically: a symlink under the root stays where the user sees it."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def tree_digest(fingerprints: list[Fingerprint]) -> str:
    """One hash over the identities of every raw file read: the raw tree's identity (mtimes left out)."""
    unique = {fp.path: fp.identity() for fp in fingerprints}
    blob = json.dumps([unique[p] for p in sorted(unique)], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()
