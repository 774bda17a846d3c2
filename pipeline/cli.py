"""`mer`: one subcommand per pipeline stage. DVC stages call these commands.

Errors caused by input (a wrong path, a malformed file) print one line and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import PipelineError, one_line


def _cmd_demo_corpus(args: argparse.Namespace) -> None:
    from pipeline.core.params import load_section, section_to_dataclass
    from pipeline.demo.corpus import DemoConfig, generate_demo_corpus

    values = load_section(args.params, "demo") if args.params else {}
    if args.seed is not None:
        values = {**values, "seed": args.seed}
    where = f"{args.params}:demo" if args.params else "demo"
    sources = {"seed": "--seed"} if args.seed is not None else None
    config = section_to_dataclass(DemoConfig, values, where, sources=sources)
    truth = generate_demo_corpus(Path(args.out), config, params_file=args.params, wait_s=args.wait)
    counts = truth.get("counts", {})
    print(f"demo corpus written to {args.out}: {counts}")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from pipeline.stages.prepare import describe, prepare_corpus

    summary = prepare_corpus(args.corpus, Path(args.root), Path(args.out), args.label_policy, wait_s=args.wait)
    print(describe(summary))
    print(f"manifest and summary written to {args.out}")


def _cmd_extract(args: argparse.Namespace) -> None:
    from pipeline.core.params import load_section
    from pipeline.stages.extract import describe, extract_features

    section = load_section(args.params, f"extract.{args.feature_set}") if args.params else None
    report = extract_features(
        args.feature_set,
        Path(args.manifest),
        Path(args.out),
        section,
        raw_root=Path(args.root) if args.root else None,
        where=f"{args.params}:extract" if args.params else "extract",
        wait_s=args.wait,
        params_file=args.params,
    )
    print(describe(report, Path(args.out)))


def _cmd_tiny_models(args: argparse.Namespace) -> None:
    from pipeline.demo.tiny_models import build_all

    for modality, path in build_all(Path(args.out), seed=args.seed, wait_s=args.wait).items():
        print(f"{modality}: {path}")


def _cmd_import_features(args: argparse.Namespace) -> None:
    from pipeline.stages.import_features import describe, import_features

    summary = import_features(
        Path(args.pickle), args.format, args.corpus, Path(args.out),
        dev_fraction=args.dev_fraction, seed=args.seed, text_layers=args.text_layers, dtype=args.dtype,
        wait_s=args.wait,
    )
    print(describe(summary, Path(args.out)))


def _cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from pipeline.core.params import section_to_dataclass
    from pipeline.stages.train import TrainConfig, load_train_config, train, train_seeds

    config = load_train_config(args.params, args.corpus)
    overrides = {key: value for key, value in (("seed", args.seed), ("split", args.split)) if value is not None}
    sources = {key: f"--{key}" for key in overrides}
    if args.model is not None:
        overrides["model"] = {**config.model, "name": args.model}
        sources["model.name"] = "--model"
    if overrides:
        config = section_to_dataclass(TrainConfig, {**asdict(config), **overrides}, f"{args.params}:train",
                                      sources=sources)
    if args.seeds < 1:
        raise PipelineError(f"--seeds must be at least 1, got {args.seeds}")
    kwargs = {"fresh": args.fresh, "cpu": args.cpu, "feature_shuffle": args.feature_shuffle, "params_file": args.params,
              "wait_s": args.wait}
    if args.seeds == 1:
        train(args.corpus, Path(args.prepared), Path(args.features), Path(args.out), config, **kwargs)
        return
    summary = train_seeds(
        args.corpus, Path(args.prepared), Path(args.features), Path(args.out), config, args.seeds, **kwargs
    )
    mean, std = summary["mean"], summary["std"]
    print(
        f"{args.corpus}, seeds {summary['seeds']}: test weighted F1 {mean['test.weighted_f1']:.4f} +- "
        f"{std['test.weighted_f1']:.4f}, dev {mean['dev.weighted_f1']:.4f} +- {std['dev.weighted_f1']:.4f} "
        f"({Path(args.out) / 'seeds.json'})"
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from pipeline.stages.evaluate import EvaluateConfig, describe, evaluate_checkpoint
    from pipeline.core.params import load_section

    config = load_section(args.params, "evaluate", EvaluateConfig) if args.params else EvaluateConfig()
    results = evaluate_checkpoint(
        Path(args.checkpoint), Path(args.prepared), Path(args.features), Path(args.out), config, cpu=args.cpu,
        params_file=args.params, wait_s=args.wait,
    )
    if PartialState().is_main_process:
        print(describe(results))
        print(f"metrics, confusion plots and predictions written to {args.out}")


def _cmd_lineage(args: argparse.Namespace) -> int:
    from pipeline.stages.lineage import check_json_target, describe, trace, write_json

    paths = [Path(p) for p in args.paths]
    if args.json:  # before the trace: a --json that is an input, a folder or another file is refused at once
        check_json_target(Path(args.json), [Path(args.project) / p for p in paths])  # PATHs are read from --project
    lineage = trace(paths or None, project=Path(args.project), rehash=args.rehash)
    print(describe(lineage))
    if args.json:
        write_json(lineage, Path(args.json), project=Path(args.project))
    return 1 if lineage.broken else 0


def _cmd_aggregate(args: argparse.Namespace) -> None:
    from pipeline.stages.aggregate import aggregate, describe

    print(describe(aggregate([Path(p) for p in args.runs], Path(args.out))))
    print(f"written to {args.out}")


def _cmd_report(args: argparse.Namespace) -> None:
    from pipeline.stages.report import write_run_report

    written = write_run_report(
        corpus=args.corpus,
        prepared=Path(args.prepared),
        features=Path(args.features),
        train=Path(args.train),
        evaluation=Path(args.eval),
        out=Path(args.out),
        wait_s=args.wait,
    )
    for path in written:
        print(f"run report written to {path}")


def _add_wait(command: argparse.ArgumentParser, output: str = "--out") -> None:
    command.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help=f"seconds to wait for another run writing {output} to finish (it holds the output's lock); "
        "default 0: refuse at once",
    )


def build_parser() -> argparse.ArgumentParser:
    from pipeline.corpora import corpus_names

    parser = argparse.ArgumentParser(prog="mer", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo-corpus", help="generate the offline demo corpus (MELD and IEMOCAP layouts)")
    demo.add_argument("out", help="folder to create; replaced only if generation succeeds")
    demo.add_argument("--params", type=Path, help="params.yaml whose `demo` section configures the corpus")
    demo.add_argument("--seed", type=int, help="override the seed")
    _add_wait(demo, "OUT")
    demo.set_defaults(func=_cmd_demo_corpus)

    corpora = corpus_names()  # names only: a command imports the one reader it runs
    prep = sub.add_parser("prepare", help="read a raw corpus tree into an utterance manifest")
    prep.add_argument("--corpus", required=True, choices=sorted(corpora))
    prep.add_argument("--root", required=True, help="the raw release folder (e.g. MELD.Raw, IEMOCAP_full_release)")
    prep.add_argument("--out", required=True, help="output folder for manifest.parquet and summary.json")
    prep.add_argument("--label-policy", help="the corpus's label set (a wrong one is answered with the list); "
                      "default: its benchmark set")
    _add_wait(prep)
    prep.set_defaults(func=_cmd_prepare)

    ext = sub.add_parser("extract", help="extract one feature set of a manifest into a feature store")
    ext.add_argument("feature_set", metavar="SET",
                     help="the feature set: a section `extract.<SET>` of --params (text, audio, face, audio_egemaps...)")
    ext.add_argument("--manifest", required=True, help="the prepared corpus folder (holds manifest.parquet)")
    ext.add_argument("--out", required=True, help="the feature store folder; an unfinished one is resumed")
    ext.add_argument("--params", type=Path, help="params.yaml whose `extract.<SET>` section configures it; "
                     "without it, SET must be a modality (text, audio, face) and gets the default extractor")
    ext.add_argument("--root", help="the raw corpus folder, if it moved since `mer prepare`")
    _add_wait(ext)
    ext.set_defaults(func=_cmd_extract)

    tiny = sub.add_parser("tiny-models", help="build the offline stand-in models (tiny RoBERTa, wav2vec2, FaceNet)")
    tiny.add_argument("out", help="folder to write the three models into")
    tiny.add_argument("--seed", type=int, default=0)
    _add_wait(tiny, "OUT")
    tiny.set_defaults(func=_cmd_tiny_models)

    imp = sub.add_parser(
        "import-features",
        help="convert a published MER feature pickle (DialogueRNN/DialogueGCN/MMGCN or SDT/GraphSmile layout) "
        "into a manifest and feature stores; unpickling runs the file's code: import only files you trust",
        description="Convert a published MER feature pickle into prepared/<corpus>/ (manifest + summary) and "
        "features/<corpus>/{text,audio,face}/ feature stores. WARNING: unpickling executes code chosen by the "
        "file's author; import only files you trust. Supported layouts: see pipeline/stages/import_features.py.",
    )
    imp.add_argument("pickle", help="the feature pickle (only one you trust: loading it executes code)")
    imp.add_argument("--format", required=True, choices=["dialoguernn", "sdt"],
                     help="dialoguernn: one text vector per utterance; sdt: four RoBERTa layers (roberta1..4)")
    imp.add_argument("--corpus", required=True, choices=["iemocap", "meld"])
    imp.add_argument("--out", required=True, help="gets prepared/<corpus>/ and features/<corpus>/{text,audio,face}/")
    imp.add_argument("--dev-fraction", type=float, default=0.1,
                     help="share of trainVid dialogues carved out as dev (sorted, seeded shuffle; default 0.1)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the dev carving (default 0)")
    imp.add_argument("--text-layers", choices=["mean", "concat", "last"],
                     help="sdt only: mean of the four layers (default), their concatenation, or the last layer "
                     "(roberta1, what SDT and GraphSmile read)")
    imp.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                     help="store dtype; float32 (default) keeps the published values exactly")
    _add_wait(imp, "prepared/<corpus> and features/<corpus> in --out")
    imp.set_defaults(func=_cmd_import_features)

    trn = sub.add_parser(
        "train", help="train a model (train.model.name: cmath or a baseline) on one corpus's manifest and feature "
        "stores (resumes an interrupted run)"
    )
    trn.add_argument("--corpus", required=True, choices=sorted(corpora), help="selects the train.<corpus> overrides")
    trn.add_argument("--prepared", required=True, help="the prepared corpus folder (holds manifest.parquet)")
    trn.add_argument("--features", required=True,
                     help="the folder holding one feature store per modality (text/, audio/, face/)")
    trn.add_argument("--out", required=True, help="output folder: best/, last/, dvclive/, metrics.json")
    trn.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml with the `train` section")
    trn.add_argument("--seed", type=int, help="override train.seed")
    trn.add_argument("--model", help="override train.model.name: cmath, mlp, bigru or late_fusion")
    trn.add_argument("--split", help="override train.split: release, or a split scheme the manifest offers "
                     "(IEMOCAP: loso-1..loso-5, the leave-one-session-out folds)")
    trn.add_argument("--seeds", type=int, default=1,
                     help="N runs with seeds seed..seed+N-1 into OUT/seed-<s>/, and OUT/seeds.json with mean and std")
    trn.add_argument("--fresh", action="store_true", help="ignore a resumable OUT/last and start from epoch 1")
    trn.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    trn.add_argument("--feature-shuffle", type=int, metavar="SEED",
                     help="alignment check, not a result: give every utterance another utterance's features "
                     "(permuted with SEED within each split); the test score must fall to chance")
    _add_wait(trn)
    trn.set_defaults(func=_cmd_train)

    evl = sub.add_parser(
        "evaluate", help="score a checkpoint on dev and test: metrics.json, confusion plots, predictions"
    )
    evl.add_argument("--checkpoint", required=True,
                     help="a checkpoint folder written by `mer train` (e.g. data/train/meld/best)")
    evl.add_argument("--prepared", required=True, help="the prepared corpus folder the model was trained on")
    evl.add_argument("--features", required=True, help="the feature stores the model was trained on")
    evl.add_argument("--out", required=True, help="output folder; replaced only if evaluation succeeds")
    evl.add_argument("--params", type=Path, help="params.yaml whose `evaluate` section configures it")
    evl.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    _add_wait(evl)
    evl.set_defaults(func=_cmd_evaluate)

    lin = sub.add_parser(
        "lineage",
        help="trace a result back to its raw files (metrics <- checkpoint <- feature stores <- manifest <- raw) "
        "and check every link; exit 1 if one is broken",
    )
    lin.add_argument("paths", nargs="*", metavar="PATH",
                     help="a metrics file, checkpoint folder, feature store or manifest; default: the metrics "
                     "files declared in dvc.yaml")
    lin.add_argument("--json", metavar="FILE", help="also write the chain and its checks as JSON")
    lin.add_argument("--project", default=".", help="the DVC project (for dvc.yaml / dvc.lock); default: .")
    lin.add_argument("--rehash", action="store_true",
                     help="reread every raw file and compare its content hash, even where size and mtime "
                     "are unchanged (default: those are taken as unchanged)")
    lin.set_defaults(func=_cmd_lineage)

    agg = sub.add_parser("aggregate", help="many runs' metrics.json (folds, seeds) -> one table: mean +- std per score")
    agg.add_argument("runs", nargs="+", metavar="RUN", help="a metrics.json of `mer train` or `mer evaluate`, or its folder")
    agg.add_argument("--out", required=True, help="the results table (JSON, a DVC metric); an earlier one is replaced")
    agg.set_defaults(func=_cmd_aggregate)

    rep = sub.add_parser("report", help="render one corpus's run as a self-contained HTML page and Markdown")
    rep.add_argument("--corpus", required=True, choices=sorted(corpora))
    rep.add_argument("--prepared", required=True, help="the prepared corpus folder")
    rep.add_argument("--features", required=True, help="the folder holding text/, audio/, face/ stores")
    rep.add_argument("--train", required=True, help="the training output folder (metrics.json, dvclive/, best/)")
    rep.add_argument("--eval", required=True, help="the evaluation output folder")
    rep.add_argument("--out", required=True, help="output folder for report.html and report.md")
    _add_wait(rep)
    rep.set_defaults(func=_cmd_report)
    return parser


# Set to a file path, every `mer` command appends one JSON line to it: its argv and the project
# source files it loaded. The test suite runs `dvc repro` with it to check that each DVC stage
# depends on every module its command runs (tests/helpers/dvc_deps.py).
MODULE_LOG_ENV = "MER_MODULE_LOG"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("pipeline", "extractors", "model")


def loaded_project_files() -> list[str]:
    """The project's source files (relative to the project root) imported into this process."""
    files = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] in PROJECT_PACKAGES and path:
            resolved = Path(path).resolve()
            if resolved.is_relative_to(PROJECT_ROOT):
                files.add(resolved.relative_to(PROJECT_ROOT).as_posix())
    return sorted(files)


def _log_loaded_modules(argv: list[str]) -> None:
    log = os.environ.get(MODULE_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"argv": argv, "modules": loaded_project_files()}) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    finally:
        _log_loaded_modules(argv)


def _run(argv: list[str]) -> int:
    parser = build_parser()
    debug = "--debug" in argv  # accepted after the subcommand too
    args = parser.parse_args([a for a in argv if a != "--debug"])
    try:
        code = args.func(args)
    except PipelineError as exc:
        if debug:
            raise
        print(f"mer {args.command}: error: {one_line(exc, limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mer {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem we did not foresee: still one line
        if debug:
            raise
        print(
            f"mer {args.command}: unexpected error: {type(exc).__name__}: {one_line(exc)} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
