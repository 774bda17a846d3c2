"""`params.yaml` -> typed dataclasses: one validator for every section.

Every section a stage reads is a dataclass, and `section_to_dataclass(cls, values, where)` is the one
way params become one:

1. the section must be a mapping, and every key must be a field (an unknown key is named, with the
   known ones); a field without a default must be given;
2. every value must fit its field's annotation (`check_value`): int, float (an int is accepted and
   converted), bool (never accepted for an int or a float), str, `X | None`, `Literal[...]`,
   `list[X]`, `tuple[X, ...]`, `dict[str, X]`, `Any`, and nested dataclasses;
3. then the class's own rules run (its `__post_init__`: ranges, choices taken from elsewhere,
   cross-field checks), on values that already have the right types. A rule raises
   `ParamError(key, problem)` to name its field (a dotted key for a nested one), or a plain
   ValueError for the section as a whole.

Every problem is one line, `PipelineError("<params file>:<section>.<key>: <problem>")`, e.g.
`params.yaml:train.lr: must be a number, got 'fast'`. `load_section(path, "extract.text", cls)`
reads a section by its dotted name (without `cls`: the raw mapping, checked to be one).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import yaml

from pipeline.core.errors import PipelineError, one_line

T = TypeVar("T")

# The modalities: the `extract.<modality>` sections and the names `train.modalities` accepts.
MODALITIES = ("text", "audio", "face")

_NONE = type(None)
# numbers YAML 1.1 (PyYAML) reads as strings: an exponent without a dot or without a sign
_EXPONENT = r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+"


class ParamError(ValueError):
    """A bad value at `key` (dotted, relative to the section being checked): the validator reports it
    as `<where>.<key>: <problem>`. `context` only prefixes the message of a config built in code."""

    def __init__(self, key: str, problem: str, context: str = "") -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{context}{key} {problem}" if key else f"{context}{problem}")


# ---------------------------------------------------------------------------------------------
# reading the file
# ---------------------------------------------------------------------------------------------


def load_params(path: Path | str) -> dict[str, Any]:
    """The whole params file as a mapping of sections."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level, got {_show(data)}")
    return data


@overload
def load_section(path: Path | str, name: str, cls: None = None) -> dict[str, Any]: ...
@overload
def load_section(path: Path | str, name: str, cls: type[T]) -> T: ...
def load_section(path: Path | str, name: str, cls: type[T] | None = None) -> T | dict[str, Any]:
    """Section `name` of a params file (dotted names reach nested sections, e.g. "extract.text"):
    the dataclass `cls` built by `section_to_dataclass`, or without `cls` the raw mapping.

    A missing section is an error; an empty one (`demo:`) is an empty mapping; anything on the way
    that is not a mapping (`extract: hello`) is an error naming its key."""
    node: Any = load_params(path)
    walked: list[str] = []
    for part in name.split("."):
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise PipelineError(f"{path}:{'.'.join(walked)}: must be a mapping, got {_show(node)}")
        walked.append(part)
        if part not in node:
            raise PipelineError(f"{path}:{'.'.join(walked)}: section not found")
        node = node[part]
    where = f"{path}:{name}"
    if cls is not None:
        return section_to_dataclass(cls, node, where)
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise PipelineError(f"{where}: must be a mapping, got {_show(node)}")
    return node


# ---------------------------------------------------------------------------------------------
# the validator
# ---------------------------------------------------------------------------------------------


def section_to_dataclass(
    cls: type[T], values: Mapping[str, Any] | None, where: str, sources: Mapping[str, str] | None = None
) -> T:
    """Build `cls` from a params section (None = empty); any problem is a one-line PipelineError
    naming `<where>.<key>`. `sources` relabels keys that came from elsewhere: a dotted key (or its
    prefix) -> the full label to report it under, e.g. {"lr": "params.yaml:train.iemocap.lr"}."""
    with reported_at(where, sources):
        return build(cls, {} if values is None else values)


@contextmanager
def reported_at(where: str, sources: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn a ParamError (or ValueError) raised inside into the one-line PipelineError at `where`."""
    try:
        yield
    except ParamError as exc:
        raise PipelineError(f"{_locate(exc.key, where, sources)}: {' '.join(exc.problem.split())}") from None
    except ValueError as exc:
        raise PipelineError(f"{where}: {one_line(exc, limit=1000)}") from None


def build(cls: type[T], values: Any, key: str = "") -> T:
    """`cls(**values)` after checking the keys and every value's type; the class's own rules then
    run in its __post_init__. Problems are ParamErrors whose key is prefixed with `key`."""
    if not isinstance(values, Mapping):
        raise ParamError(key, f"must be a mapping, got {_show(values)}")
    hints = field_types(cls)
    required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    checked = check_mapping(values, hints, key, required=required)
    try:
        return cls(**checked)
    except ParamError as exc:
        raise ParamError(_join(key, exc.key), exc.problem) from None
    except ValueError as exc:
        raise ParamError(key, one_line(exc, limit=1000)) from None


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's init fields -> their annotations (resolved)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def check_mapping(
    values: Mapping[Any, Any], types_: Mapping[str, Any], key: str = "", required: Iterable[str] = ()
) -> dict[str, Any]:
    """`values` with every value checked against `types_[its key]`; a key not in `types_` is a
    ParamError naming it and the known keys, as is a missing `required` key."""
    if not isinstance(values, Mapping):
        raise ParamError(key, f"must be a mapping, got {_show(values)}")
    unknown = sorted(str(k) for k in values if k not in types_)
    if unknown:
        also = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise ParamError(_join(key, unknown[0]), f"unknown key{also}; known keys: {', '.join(sorted(types_))}")
    for name in required:
        if name not in values:
            raise ParamError(_join(key, name), "is required")
    return {k: check_value(v, types_[k], _join(key, k)) for k, v in values.items()}


def check_value(value: Any, hint: Any, key: str = "") -> Any:
    """`value` if it fits the annotation `hint` (converted: int -> float, list -> tuple, mapping ->
    dataclass), else a ParamError at `key`. See the module docstring for the annotations supported."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if _NONE in args:
                return None
            raise ParamError(key, _expected(hint, value))
        options = [a for a in args if a is not _NONE]
        # a container of the right shape reports its own (more precise) problem, e.g. a bad item
        shaped = [a for a in options if _is_container(a) and _fits_shape(a, value)]
        if len(shaped) == 1:
            return check_value(value, shaped[0], key)
        for option in options:
            try:
                return check_value(value, option, key)
            except ParamError:
                pass
        raise ParamError(key, _expected(hint, value))
    if hint is _NONE:
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
    elif origin is list:
        if isinstance(value, list):
            item = args[0] if args else Any
            return [check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(check_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if not args:
                return tuple(value)
            if len(value) == len(args):
                return tuple(check_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif origin is dict:
        if isinstance(value, dict):
            key_type, item = args if args else (Any, Any)
            return {check_value(k, key_type, _join(key, str(k))): check_value(v, item, _join(key, str(k)))
                    for k, v in value.items()}
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    else:
        raise TypeError(f"{key}: annotation {hint!r} is not supported by pipeline.core.params")
    raise ParamError(key, _expected(hint, value))


def require_choice(value: Any, choices: Iterable[Any], key: str) -> Any:
    """A rule for choices listed elsewhere (not in a Literal): `value` if it is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ParamError(key, f"must be one of {', '.join(map(repr, choices))}, got {_show(value)}")
    return value


def require_finite(value: float, key: str) -> float:
    """A rule: `value` is a finite number (YAML's .nan and .inf are floats too)."""
    if not math.isfinite(value):
        raise ParamError(key, f"must be a finite number, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------------


def describe(hint: Any) -> str:
    """What a value of annotation `hint` is, in words: "an integer", "a list of numbers"..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "anything"
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if a is not _NONE] + (["null"] if _NONE in args else [])
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args)) if len(args) > 1 else repr(args[0])
    if origin is list:
        return f"a list of {_plural(args[0])}" if args and args[0] is not Any else "a list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if args and all(a == args[0] for a in args):
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list [{', '.join(describe(a) for a in args)}]" if args else "a list"
    if origin is dict:
        return f"a mapping of {_plural(args[1])}" if args and args[1] is not Any else "a mapping"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "a mapping"
    return {_NONE: "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, repr(hint)
    )


def _plural(hint: Any) -> str:
    plain = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
    if hint in plain:
        return plain[hint]
    return f"items that are each {describe(hint)}"


def _expected(hint: Any, value: Any) -> str:
    message = f"must be {describe(hint)}, got {_show(value)}"
    if isinstance(value, str) and _mentions_float(hint) and re.fullmatch(_EXPONENT, value.strip()):
        message += " (YAML reads 1e-4 and 1.0e4 as strings: write 1.0e-4 and 1.0e+4)"
    return message


def _mentions_float(hint: Any) -> bool:
    return hint is float or any(_mentions_float(a) for a in typing.get_args(hint))


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_container(hint: Any) -> bool:
    return typing.get_origin(hint) in (list, tuple, dict) or (isinstance(hint, type) and dataclasses.is_dataclass(hint))


def _fits_shape(hint: Any, value: Any) -> bool:
    if typing.get_origin(hint) in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, dict)


def _join(prefix: str, key: str) -> str:
    if not prefix or not key:
        return prefix or key
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


def _locate(key: str, where: str, sources: Mapping[str, str] | None) -> str:
    """The label of `key`: its (longest-prefix) entry in `sources`, else `<where>.<key>`."""
    if sources:
        cuts = [len(key)] + [i for i in range(len(key) - 1, 0, -1) if key[i] in ".["]
        for cut in cuts:
            if key[:cut] in sources:
                return sources[key[:cut]] + key[cut:]
    return _join(where, key)
