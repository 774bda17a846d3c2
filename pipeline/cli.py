"""`mer`: one subcommand per pipeline stage. DVC stages call these commands.

Errors caused by input (a wrong path, a malformed file) print one line and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError


def _cmd_demo_corpus(args: argparse.Namespace) -> None:
    from pipeline.config import load_section
    from pipeline.demo import DemoConfig, generate_demo_corpus

    config = load_section(args.params, "demo", DemoConfig) if args.params else DemoConfig()
    if args.seed is not None:
        config.seed = args.seed
    truth = generate_demo_corpus(Path(args.out), config)
    counts = truth.get("counts", {})
    print(f"demo corpus written to {args.out}: {counts}")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from pipeline.prepare import describe, prepare_corpus

    summary = prepare_corpus(args.corpus, Path(args.root), Path(args.out), args.label_policy)
    print(describe(summary))
    print(f"manifest and summary written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.corpora import available_corpora

    parser = argparse.ArgumentParser(prog="mer", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo-corpus", help="generate the offline demo corpus (MELD and IEMOCAP layouts)")
    demo.add_argument("out", help="folder to create; replaced only if generation succeeds")
    demo.add_argument("--params", type=Path, help="params.yaml whose `demo` section configures the corpus")
    demo.add_argument("--seed", type=int, help="override the seed")
    demo.set_defaults(func=_cmd_demo_corpus)

    corpora = available_corpora()
    policies = ", ".join(f"{name}: {'/'.join(spec.label_policies)}" for name, spec in corpora.items())
    prep = sub.add_parser("prepare", help="read a raw corpus tree into an utterance manifest")
    prep.add_argument("--corpus", required=True, choices=sorted(corpora))
    prep.add_argument("--root", required=True, help="the raw release folder (e.g. MELD.Raw, IEMOCAP_full_release)")
    prep.add_argument("--out", required=True, help="output folder for manifest.parquet and summary.json")
    prep.add_argument("--label-policy", help=f"label set ({policies}); default: the corpus's benchmark set")
    prep.set_defaults(func=_cmd_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"mer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
