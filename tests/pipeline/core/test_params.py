"""The one params validator (pipeline.core.params): keys, types, the class's own rules, and the
one-line message naming the params file and the full dotted key, directly and through `mer`."""

# no `from __future__ import annotations`: the sample dataclasses' annotations stay real objects, so
# resolving them does not depend on how pytest imported this module

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.params import (
    MODALITIES,
    ParamError,
    check_value,
    describe,
    load_params,
    load_section,
    section_to_dataclass,
)
from tests.helpers import PROJECT_ROOT

WHERE = "params.yaml:sample"


@dataclass
class Inner:
    depth: int = 1
    label: str = "x"

    def __post_init__(self) -> None:
        if self.depth < 0:
            raise ParamError("depth", f"must be 0 or more, got {self.depth}")


@dataclass
class Sample:
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    name: str = "a"
    limit: int | None = None
    names: list[str] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)
    floats: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    mode: Literal["fast", "slow"] = "fast"
    pair: tuple[int, int] = (1, 2)
    weights: list[float] | Literal["balanced"] | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ParamError("count", f"must be 0 or more, got {self.count}")
        if self.mode == "slow" and self.rate > 1:
            raise ValueError("mode slow needs rate <= 1")


@dataclass
class Required:
    width: int


def build(values: Any) -> Sample:
    return section_to_dataclass(Sample, values, WHERE)


def error(values: Any) -> str:
    with pytest.raises(PipelineError) as info:
        build(values)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- types ----------------------------------------------------------------------------------


def test_every_supported_type_is_accepted_and_converted() -> None:
    config = build({
        "count": 3, "rate": 1, "flag": True, "name": "b", "limit": 7, "names": ["x", "y"], "ints": [-1, 2],
        "floats": [1, 2.5], "extra": {"k": [1, "v"]}, "mode": "slow", "pair": [4, 5], "weights": [1, 0.5],
        "inner": {"depth": 2},
    })
    assert config.rate == 1.0 and isinstance(config.rate, float) and config.rate.is_integer()
    assert config.floats == [1.0, 2.5] and all(isinstance(v, float) for v in config.floats)
    assert config.pair == (4, 5) and config.inner == Inner(depth=2)
    assert config.limit == 7 and config.extra == {"k": [1, "v"]} and config.mode == "slow"
    assert build({"limit": None, "weights": "balanced"}).weights == "balanced"
    assert build(None) == Sample() == build({})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": "3"}, "sample.count: must be an integer, got '3'"),
        ({"count": 2.0}, "sample.count: must be an integer, got 2.0"),
        ({"count": True}, "sample.count: must be an integer, got True"),  # bool is never an int
        ({"rate": "fast"}, "sample.rate: must be a number, got 'fast'"),
        ({"rate": False}, "sample.rate: must be a number, got False"),
        ({"rate": None}, "sample.rate: must be a number, got None"),
        ({"flag": 1}, "sample.flag: must be true or false, got 1"),
        ({"flag": "yes please"}, "sample.flag: must be true or false, got 'yes please'"),
        ({"name": 5}, "sample.name: must be a string, got 5"),
        ({"limit": "none"}, "sample.limit: must be an integer or null, got 'none'"),
        ({"limit": True}, "sample.limit: must be an integer or null, got True"),
        ({"names": "x"}, "sample.names: must be a list of strings, got 'x'"),
        ({"names": ["x", 3]}, "sample.names[1]: must be a string, got 3"),
        ({"ints": [1, True]}, "sample.ints[1]: must be an integer, got True"),
        ({"ints": [1, 1.5]}, "sample.ints[1]: must be an integer, got 1.5"),
        ({"floats": [1, "2"]}, "sample.floats[1]: must be a number, got '2'"),
        ({"extra": [1]}, "sample.extra: must be a mapping, got [1]"),
        ({"extra": {1: "a"}}, "sample.extra.1: must be a string, got 1"),
        ({"mode": "medium"}, "sample.mode: must be one of 'fast', 'slow', got 'medium'"),
        ({"mode": 1}, "sample.mode: must be one of 'fast', 'slow', got 1"),
        ({"pair": [1]}, "sample.pair: must be a list of 2 integers, got [1]"),
        ({"pair": [1, "b"]}, "sample.pair[1]: must be an integer, got 'b'"),
        ({"weights": "balancd"}, "sample.weights: must be a list of numbers, 'balanced' or null, got 'balancd'"),
        ({"weights": [1, "x"]}, "sample.weights[1]: must be a number, got 'x'"),
        ({"inner": 3}, "sample.inner: must be a mapping, got 3"),
        ({"inner": {"depth": "deep"}}, "sample.inner.depth: must be an integer, got 'deep'"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_full_key(values, message) -> None:
    assert error(values) == f"params.yaml:{message}"


def test_an_exponent_yaml_reads_as_a_string_gets_a_hint() -> None:
    rate = yaml.safe_load("rate: 1e-4")["rate"]
    assert rate == "1e-4"  # YAML 1.1: no dot, no float
    assert error({"rate": rate}) == (
        "params.yaml:sample.rate: must be a number, got '1e-4' (YAML reads 1e-4 and 1.0e4 as strings: "
        "write 1.0e-4 and 1.0e+4)"
    )


def test_check_value_and_describe_directly() -> None:
    assert check_value(3, float) == 3.0 and check_value([1, 2], tuple[int, ...]) == (1, 2)
    assert check_value("anything", Any) == "anything" and check_value(None, int | None) is None
    with pytest.raises(ParamError) as info:
        check_value([1, "a"], list[int], "layers")
    assert (info.value.key, info.value.problem) == ("layers[1]", "must be an integer, got 'a'")
    assert describe(list[Literal["a", "b"]]) == "a list of items that are each one of 'a', 'b'"
    assert describe(dict[str, int]) == "a mapping of integers"
    with pytest.raises(TypeError, match="not supported"):
        check_value(1, set[int], "x")


# --- keys and sections ----------------------------------------------------------------------


def test_an_unknown_key_is_named_with_the_known_ones() -> None:
    known = ", ".join(sorted(f.name for f in dataclasses.fields(Sample)))
    assert error({"cuont": 1}) == f"params.yaml:sample.cuont: unknown key; known keys: {known}"
    assert error({"zz": 1, "cuont": 1}) == f"params.yaml:sample.cuont: unknown key (also unknown: zz); known keys: {known}"
    assert error({"inner": {"dept": 1}}) == "params.yaml:sample.inner.dept: unknown key; known keys: depth, label"


def test_a_required_field_must_be_given() -> None:
    with pytest.raises(PipelineError, match=r"^p:section\.width: is required$"):
        section_to_dataclass(Required, {}, "p:section")


@pytest.mark.parametrize("values", ["hello", [1, 2], 3, True])
def test_a_section_of_the_wrong_type_is_one_line(values) -> None:
    assert error(values) == f"params.yaml:sample: must be a mapping, got {values!r}"


def test_the_class_rules_run_after_the_types_and_name_their_key() -> None:
    assert error({"count": -1}) == "params.yaml:sample.count: must be 0 or more, got -1"
    assert error({"inner": {"depth": -2}}) == "params.yaml:sample.inner.depth: must be 0 or more, got -2"
    assert error({"mode": "slow", "rate": 2}) == "params.yaml:sample: mode slow needs rate <= 1"  # cross-field
    with pytest.raises(ParamError, match="^count must be 0 or more, got -1$"):  # built in code: a plain ValueError
        Sample(count=-1)


def test_sources_relabel_keys_that_came_from_elsewhere() -> None:
    sources = {"count": "--count", "inner.depth": "p:override.inner.depth"}
    with pytest.raises(PipelineError, match=r"^--count: must be 0 or more, got -1$"):
        section_to_dataclass(Sample, {"count": -1}, WHERE, sources=sources)
    with pytest.raises(PipelineError, match=r"^p:override\.inner\.depth: must be an integer, got 'x'$"):
        section_to_dataclass(Sample, {"inner": {"depth": "x"}}, WHERE, sources=sources)
    with pytest.raises(PipelineError, match=r"^params\.yaml:sample\.rate: "):  # not in sources: where it was
        section_to_dataclass(Sample, {"rate": "x"}, WHERE, sources=sources)


def test_load_section_walks_dotted_names_and_names_the_key_that_is_not_a_mapping(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"outer": {"sample": {"count": 4}, "empty": None}, "flat": "hello"}))
    assert load_section(params, "outer.sample", Sample).count == 4
    assert load_section(params, "outer.sample") == {"count": 4}
    assert load_section(params, "outer.empty") == {} and load_section(params, "outer.empty", Sample) == Sample()
    cases = {
        "flat.sample": f"{params}:flat: must be a mapping, got 'hello'",
        "flat": f"{params}:flat: must be a mapping, got 'hello'",
        "outer.nothing": f"{params}:outer.nothing: section not found",
        "missing": f"{params}:missing: section not found",
    }
    for name, message in cases.items():
        with pytest.raises(PipelineError) as info:
            load_section(params, name)
        assert str(info.value) == message
    params.write_text(yaml.safe_dump({"outer": {"sample": {"count": "x"}}}))
    with pytest.raises(PipelineError, match=r"outer\.sample\.count: must be an integer"):
        load_section(params, "outer.sample", Sample)
    params.write_text("- a\n- b\n")
    with pytest.raises(PipelineError, match="expected a mapping of sections at the top level"):
        load_params(params)


# --- the project's sections -----------------------------------------------------------------


def test_every_section_of_the_project_params_loads() -> None:
    from extractors.base import DEFAULT_EXTRACTORS
    from pipeline.demo.corpus import DemoConfig
    from pipeline.stages.evaluate import EvaluateConfig
    from pipeline.stages.extract import extractor_config
    from pipeline.stages.train import load_train_config

    params = PROJECT_ROOT / "params.yaml"
    assert isinstance(load_section(params, "demo", DemoConfig), DemoConfig)
    assert isinstance(load_section(params, "evaluate", EvaluateConfig), EvaluateConfig)
    sets = load_section(params, "extract")
    for name, section in sets.items():
        # dvc.yaml's extract stages read `modality` and `extractor` of every set for its code deps
        assert section.get("modality") in MODALITIES and section.get("extractor"), name
        cls, config = extractor_config(name, section, f"{params}:extract.{name}")
        assert cls.modality == config.modality == section["modality"] and config.batch_size >= 1
    for corpus in ("meld", "iemocap"):
        config = load_train_config(params, corpus)
        assert set(config.modalities) <= set(MODALITIES)
        for modality in MODALITIES:  # dvc.yaml's train deps name the store of every modality
            assert sets[config.features[modality]]["modality"] == modality
    assert set(DEFAULT_EXTRACTORS) == set(MODALITIES)  # every modality has an extractor, and only those


# --- through `mer` --------------------------------------------------------------------------


def run_mer(tmp_path: Path, capsys, params: dict, *command: str) -> str:
    from pipeline.cli import main

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    code = main([*command, "--params", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.rstrip("\n").replace(str(path), "params.yaml")


def train_args(tmp_path: Path, corpus: str = "meld") -> list[str]:
    return ["train", "--corpus", corpus, "--prepared", str(tmp_path / "p"), "--features", str(tmp_path / "f"),
            "--out", str(tmp_path / "out")]  # fmt: skip


def test_mer_extract_with_a_section_that_is_not_a_mapping(tmp_path, capsys) -> None:
    args = ["extract", "text", "--manifest", str(tmp_path / "m"), "--out", str(tmp_path / "o")]
    assert run_mer(tmp_path, capsys, {"extract": "hello"}, *args) == (
        "mer extract: error: params.yaml:extract: must be a mapping, got 'hello'"
    )
    assert run_mer(tmp_path, capsys, {"extract": {"text": [1, 2]}}, *args) == (
        "mer extract: error: params.yaml:extract.text: must be a mapping, got [1, 2]"
    )
    assert run_mer(tmp_path, capsys, {"extract": {"audio": {}}}, *args) == (
        "mer extract: error: params.yaml:extract.text: section not found"
    )
    # the section is checked before the manifest is looked for (there is none here)
    audio = ["extract", "audio", "--manifest", str(tmp_path / "m"), "--out", str(tmp_path / "o")]
    assert run_mer(tmp_path, capsys, {"extract": {"audio": {"layers": [-1, "last"]}}}, *audio) == (
        "mer extract: error: params.yaml:extract.audio.layers[1]: must be an integer, got 'last'"
    )
    assert run_mer(tmp_path, capsys, {"extract": {"text": {"extractor": ["roberta"]}}}, *args) == (
        "mer extract: error: params.yaml:extract.text.extractor: must be a string, got ['roberta']"
    )
    assert not (tmp_path / "o").exists()


def test_mer_train_names_the_bad_key(tmp_path, capsys) -> None:
    def train_error(train: Any, corpus: str = "meld") -> str:
        return run_mer(tmp_path, capsys, {"train": train}, *train_args(tmp_path, corpus))

    assert train_error({"lr": "fast"}) == "mer train: error: params.yaml:train.lr: must be a number, got 'fast'"
    assert train_error([1, 2]) == "mer train: error: params.yaml:train: must be a mapping, got [1, 2]"
    assert train_error({"modalities": ["text", "aduio", "face"]}) == (
        "mer train: error: params.yaml:train.modalities[1]: must be one of 'text', 'audio', 'face', got 'aduio'"
    )
    unknown = train_error({"model": {"hidden_size": 32, "hiden_size": 64}})
    assert unknown.startswith("mer train: error: params.yaml:train.model.hiden_size: unknown key; known keys: ")
    assert "hidden_size" in unknown and "input_dims" not in unknown  # the data's fields are not params
    assert train_error({"model": {"num_heads": "two"}}) == (
        "mer train: error: params.yaml:train.model.num_heads: must be an integer, got 'two'"
    )
    assert train_error({"model": {"use_reconstruction": 1}}) == (
        "mer train: error: params.yaml:train.model.use_reconstruction: must be true or false, got 1"
    )
    assert train_error({"model": {"class_weights": "balancd"}}) == (
        "mer train: error: params.yaml:train.model.class_weights: must be a list of numbers, 'balanced' or null, "
        "got 'balancd'"
    )
    assert train_error({"bucket_by_length": 1}) == (
        "mer train: error: params.yaml:train.bucket_by_length: must be true or false, got 1"
    )
    assert train_error({"epochs": True}) == "mer train: error: params.yaml:train.epochs: must be an integer, got True"
    assert train_error({"scheduler": "cos"}) == (
        "mer train: error: params.yaml:train.scheduler: must be one of 'cosine', 'constant', got 'cos'"
    )
    assert train_error({"warmup_ratio": 1}) == "mer train: error: params.yaml:train.warmup_ratio: must be in [0, 1), got 1.0"
    assert train_error({"modalities": ["text", "text"]}) == (
        "mer train: error: params.yaml:train.modalities: lists a modality twice: ['text', 'text']"
    )


def test_mer_train_names_the_corpus_override_a_bad_value_came_from(tmp_path, capsys) -> None:
    def train_error(train: Any) -> str:
        return run_mer(tmp_path, capsys, {"train": train}, *train_args(tmp_path, "iemocap"))

    assert train_error({"lr": 0.1, "iemocap": {"lr": "slow"}}) == (
        "mer train: error: params.yaml:train.iemocap.lr: must be a number, got 'slow'"
    )
    assert train_error({"model": {"dropout": 0.1}, "iemocap": {"model": {"dropout": "x"}}}) == (
        "mer train: error: params.yaml:train.iemocap.model.dropout: must be a number, got 'x'"
    )
    assert train_error({"iemocap": {"model": {"hiden_size": 3}}}).startswith(
        "mer train: error: params.yaml:train.iemocap.model.hiden_size: unknown key; known keys: "
    )
    assert train_error({"iemocap": {"modalities": ["face", "txt"]}}) == (
        "mer train: error: params.yaml:train.iemocap.modalities[1]: must be one of 'text', 'audio', 'face', got 'txt'"
    )
    assert train_error({"iemocap": [1]}) == (
        "mer train: error: params.yaml:train.iemocap: must be a mapping of train keys to override, got [1]"
    )
    assert train_error({"iemocap": {"model": 5}}) == (
        "mer train: error: params.yaml:train.iemocap.model: must be a mapping, got 5"
    )
    # a bad shared key is named where it was written, even for the corpus that overrides others
    assert train_error({"lr": "fast", "iemocap": {"epochs": 2}}) == (
        "mer train: error: params.yaml:train.lr: must be a number, got 'fast'"
    )


def test_mer_train_seed_override_is_checked_too(tmp_path, capsys) -> None:
    assert run_mer(tmp_path, capsys, {"train": {}}, *train_args(tmp_path), "--seed", "-1") == (
        "mer train: error: --seed: must be an integer >= 0, got -1"
    )


def test_mer_evaluate_and_demo_corpus_name_the_bad_key(tmp_path, capsys) -> None:
    evaluate = ["evaluate", "--checkpoint", str(tmp_path / "c"), "--prepared", str(tmp_path / "p"),
                "--features", str(tmp_path / "f"), "--out", str(tmp_path / "e")]  # fmt: skip
    assert run_mer(tmp_path, capsys, {"evaluate": {"splits": ["dev", "tset"]}}, *evaluate) == (
        "mer evaluate: error: params.yaml:evaluate.splits[1]: must be one of 'train', 'dev', 'test', got 'tset'"
    )
    assert run_mer(tmp_path, capsys, {"evaluate": {"batch_size": -1}}, *evaluate) == (
        "mer evaluate: error: params.yaml:evaluate.batch_size: must be an integer >= 0, got -1"
    )
    demo = ["demo-corpus", str(tmp_path / "demo")]
    assert run_mer(tmp_path, capsys, {"demo": {"fps": "ten"}}, *demo) == (
        "mer demo-corpus: error: params.yaml:demo.fps: must be an integer, got 'ten'"
    )
    assert run_mer(tmp_path, capsys, {"demo": {"meld_frame_size": [320, 240, 3]}}, *demo) == (
        "mer demo-corpus: error: params.yaml:demo.meld_frame_size: must be a list of 2 integers, got [320, 240, 3]"
    )
    assert run_mer(tmp_path, capsys, {"demo": {}}, *demo, "--seed", "-2") == (
        "mer demo-corpus: error: --seed: must be an integer in [0, 9223372036854775807], got -2"
    )
    assert not (tmp_path / "demo").exists()
