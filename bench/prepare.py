"""Benchmark of `mer prepare`: what content fingerprints of media (SHA-256 of every clip) cost.

`prepare` hashes every raw file it reads, so lineage survives `dvc checkout`, `dvc pull` and
copies that lose file times. This times, in one run on this machine:
  (a) `mer prepare` of each demo corpus, as the pipeline runs it (hashing included);
  (b) hashing alone: SHA-256 over exactly the media files that prepare fingerprinted (the extra
      cost over the old size + mtime fingerprints), from the page cache;
  (c) SHA-256 throughput over a file of `--size-mb` of random bytes (page cache), from which the
      hashing time for the full MELD archive (about 10 GB of clips) is estimated. A cold disk adds
      its read time: at ~200 MB/s (a SATA SSD or a fast HDD) 10 GB take ~50 s to read.

    python bench/prepare.py            # demo corpus in a temporary folder
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from pipeline.core.fingerprint import sha256_file
from pipeline.demo.corpus import DemoConfig, generate_demo_corpus
from pipeline.formats.manifest import read_manifest
from pipeline.stages.prepare import prepare_corpus

ROOTS = {"meld": "MELD.Raw", "iemocap": "IEMOCAP_full_release"}
MELD_ARCHIVE_BYTES = 10e9


def media_files(prepared: Path, root: Path) -> list[Path]:
    rows = read_manifest(prepared)
    paths = {s["path"] for row in rows for s in row["sources"] if s.get("mtime_ns") is not None}
    return [root / p for p in sorted(paths)]


def hash_seconds(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        sha256_file(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512, help="size of the throughput test file")
    args = parser.parse_args()
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        generate_demo_corpus(tmp_path / "demo", DemoConfig())
        for corpus, folder in ROOTS.items():
            root, out = tmp_path / "demo" / folder, tmp_path / "prepared" / corpus
            start = time.perf_counter()
            prepare_corpus(corpus, root, out)
            prepare_s = time.perf_counter() - start
            paths = media_files(out, root)
            size = sum(p.stat().st_size for p in paths)
            hashing_s = hash_seconds(paths)
            results[corpus] = {"prepare_s": round(prepare_s, 2), "media_files": len(paths),
                               "media_mb": round(size / 1e6, 1), "hashing_s": round(hashing_s, 3),
                               "hashing_share_of_prepare": round(hashing_s / prepare_s, 3)}
            print(f"{corpus}: prepare {prepare_s:.2f} s; hashing {len(paths)} media files ({size / 1e6:.1f} MB) "
                  f"{hashing_s:.3f} s = {100 * hashing_s / prepare_s:.1f} % of it")
        big = tmp_path / "big.bin"
        with open(big, "wb") as handle:
            for _ in range(args.size_mb):
                handle.write(os.urandom(1 << 20))
        sha256_file(big)  # into the page cache
        seconds = hash_seconds([big])
        rate = args.size_mb * (1 << 20) / seconds
        results["sha256_mb_per_s"] = round(rate / 1e6)
        results["meld_archive_hash_s_estimate"] = round(MELD_ARCHIVE_BYTES / rate, 1)
        print(f"sha256: {rate / 1e6:.0f} MB/s (page cache, one core); full MELD archive (~10 GB): "
              f"~{MELD_ARCHIVE_BYTES / rate:.0f} s of hashing, plus the disk's read time when cold")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
