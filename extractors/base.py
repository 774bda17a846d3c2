"""The extractor interface: every modality's extractor is one small module behind it.

An extractor turns manifest rows into one feature tensor per utterance, in two halves so decoding
overlaps the model:

- ``decoder()`` returns a picklable ``Decoder``: manifest row -> ``Decoded`` (token ids, a waveform,
  face crops...). It runs in DataLoader worker processes, holds no model and never touches a GPU.
- ``encode(batch)`` runs the model on a batch of ``Decoded`` items in the main process, under
  ``torch.inference_mode`` (the runner sets it), and returns one ``Encoded`` per item.

``size_hint(row)`` is what the runner sorts a shard's rows by before batching (length bucketing),
computed from the manifest alone so batches are known before anything is decoded.

An extractor that must learn from the data before it can encode (``needs_fit = True``: ``tfidf``
learns a vocabulary and a projection; a fine-tuned encoder would learn weights) has an optional fit
step of three methods, run by the extract stage before any shard is encoded:

- ``fit_inputs(train_rows)``: exactly what the fit will see, as JSON-able values, built from the
  train split's rows only (the stage passes no other rows, so dev and test cannot leak in);
- ``fit(inputs) -> FittedState``: learn from those inputs alone (JSON info + named tensors);
- ``load_fitted(state)``: make ``encode`` use a state, fresh or read back from the store.

``fit_sha256`` hashes the inputs with the extractor, its version, its weights and the params that
shape the fit (``fit_params``): the store records it and the state's own hash, so a changed train
split or a changed param refits and redoes every shard, while dev or test edits do not refit.

Registering: decorate the class with ``@register_extractor``; ``get_extractor(name)`` imports the
``extractors.<name>`` module on demand, so adding an extractor is adding a module of its name. The
extractors of one modality share its input handling through ``extractors/<modality>.py`` (the text
and its context, the decoded waveform, the speaker's face crops): a feature set's DVC stage depends
on exactly those two modules and this one.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import os
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

import torch

from pipeline.core.errors import PipelineError, one_line
from pipeline.core.fingerprint import sha256_file
from pipeline.core.params import ParamError, require_choice
from pipeline.core.torchvision_compat import ensure_torchvision_ops
from pipeline.formats.feature_store import FittedState  # the fit step's result, as the store saves it

WEIGHT_SUFFIXES = (".safetensors", ".bin")

# Settings that change how fast a store is built but never what it holds: left out of the store's
# recorded params, so changing them does not invalidate finished shards.
RUNTIME_FIELDS = frozenset({"num_workers"})


@dataclass
class ExtractorConfig:
    """Settings every extractor shares; each modality's config adds its own fields."""

    modality: str = ""  # the feature set's modality: text | audio | face; empty = the set's name
    extractor: str = ""  # registry name; empty = the modality's default extractor
    batch_size: int = 16  # items per model call (upper bound; see the extractor's own limits)
    shard_size: int = 256  # utterances per store shard: the unit of resumption
    dtype: str = "float16"  # stored precision: float16 | bfloat16 | float32
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    num_workers: int = 2  # DataLoader decode processes; 0 decodes in the main process

    def __post_init__(self) -> None:
        """Value rules only: pipeline.core.params checks keys and types before (see its docstring)."""
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ParamError("num_workers", f"must be 0 or more, got {self.num_workers}")
        require_choice(self.dtype, STORE_DTYPES, "dtype")

    def recorded_params(self) -> dict[str, Any]:
        """The params a store records (and is invalidated by): all fields but the runtime ones."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME_FIELDS}


STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Decoded:
    """One utterance after decoding (worker side): either `data` for the model, or the reason there is none."""

    utterance_id: str
    data: Any = None  # what encode() needs; None when `missing` is set
    missing: str | None = None  # no feature can be made, e.g. "no_audio_stream"
    flags: list[str] = field(default_factory=list)  # caveats kept with the feature, e.g. "silent_audio"


@dataclass
class Encoded:
    """One utterance after the model: a feature tensor, or the reason there is none."""

    utterance_id: str
    feature: torch.Tensor | None
    missing: str | None = None
    flags: list[str] = field(default_factory=list)


class Decoder(ABC):
    """Manifest row -> Decoded, in a worker process. Must pickle; must not hold a model."""

    @abstractmethod
    def __call__(self, row: dict[str, Any]) -> Decoded: ...


class Extractor(ABC):
    """One feature extractor: a registered name, a config dataclass, a decoder and a batched encoder."""

    name: ClassVar[str]
    modality: ClassVar[str]  # "text" | "audio" | "face"
    version: ClassVar[str]  # bump when the same model and params would give different features
    config_class: ClassVar[type[ExtractorConfig]]
    needs_fit: ClassVar[bool] = False  # True: fitted on the train split before encoding (the fit step)
    fit_needs: ClassVar[str] = "input"  # what a train row must have to be fitted on, for messages

    def __init__(self, config: ExtractorConfig, raw_root: Path, device: torch.device) -> None:
        self.config = config
        self.raw_root = Path(raw_root)
        self.device = device

    @property
    @abstractmethod
    def model_id(self) -> str:
        """The model as the user named it (a path or a hub id)."""

    @property
    @abstractmethod
    def model_sha256(self) -> str:
        """Hash of the weights actually loaded (see `weights_sha256`); "" for an extractor that loads
        no pretrained weights (a fitted state is hashed on its own, see the fit step)."""

    def plan(self, rows: Sequence[dict[str, Any]]) -> None:
        """See the whole manifest before decoding starts (the text extractor builds dialogue context)."""

    # ---- the optional fit step (see the module docstring); only for needs_fit = True ----
    def fit_inputs(self, train_rows: Sequence[dict[str, Any]]) -> list[Any]:
        """What `fit` learns from, JSON-able and built from these train rows only; [] = nothing to fit on."""
        raise NotImplementedError(f"extractor {self.name!r} has no fit step")

    def fit_params(self) -> dict[str, Any]:
        """The params that change what `fit` learns: by default every field the config adds to
        ExtractorConfig (batch size, shard size, dtype and device do not refit)."""
        common = {f.name for f in fields(ExtractorConfig)}
        return {k: v for k, v in self.config.recorded_params().items() if k not in common}

    def fit(self, inputs: list[Any]) -> FittedState:
        """Learn from `inputs` (from `fit_inputs`) and nothing else; deterministic for the same inputs."""
        raise NotImplementedError(f"extractor {self.name!r} has no fit step")

    def load_fitted(self, state: FittedState) -> None:
        """Use `state` from now on; `encode` needs it. The stage always passes the state as stored."""
        raise NotImplementedError(f"extractor {self.name!r} has no fit step")

    @abstractmethod
    def size_hint(self, row: dict[str, Any]) -> float:
        """Cost of one row from the manifest alone (characters, seconds...), for length bucketing."""

    @abstractmethod
    def decoder(self) -> Decoder:
        """The worker-side half."""

    @abstractmethod
    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        """Run the model on decoded items (none of them missing); one Encoded per item, any order."""

    def batches(self, rows: Sequence[dict[str, Any]]) -> list[list[int]]:
        """Index batches over `rows`: sorted by size hint (stable, so deterministic), `batch_size` each."""
        order = sorted(range(len(rows)), key=lambda i: self.size_hint(rows[i]))
        size = self.config.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]


def code_modules(cls: type[Extractor]) -> list[str]:
    """The modules whose code makes an extractor's features: its modality's shared input handling
    (`extractors.<modality>`) and its own module. A feature set's DVC stage depends on their files."""
    shared = f"extractors.{cls.modality}"
    return [shared, cls.__module__] if cls.__module__ != shared else [shared]


def code_sha256(cls: type[Extractor]) -> str:
    """Identity of the code that makes an extractor's features, recorded in its store.

    Each of `code_modules(cls)` is hashed as its syntax tree without docstrings (ast.dump, no line
    numbers), so a changed statement changes the hash and redoes every shard, while comments,
    docstrings and formatting do not. Code outside those modules (this interface, the store writer,
    the libraries) is covered by the extractor's `version` and the store's format version.
    """
    return modules_code_sha256(code_modules(cls))


def modules_code_sha256(modules: Sequence[str]) -> str:
    """`code_sha256` of these modules, found without importing them (lineage checks a store with it)."""
    lines = []
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            raise PipelineError(f"the source of extractor module {module} cannot be found")
        tree = _without_docstrings(ast.parse(Path(spec.origin).read_bytes(), filename=spec.origin))
        lines.append(f"{hashlib.sha256(ast.dump(tree).encode('utf-8')).hexdigest()}  {module}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """The tree with the docstring of the module, and of every class and function, removed."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def fit_sha256(extractor: Extractor, inputs: list[Any]) -> str:
    """Identity of a fit: the extractor, its version and weights, its fit params and the exact inputs.

    The inputs' order is part of it: an extractor whose fit does not depend on order returns them
    sorted (``tfidf`` does, so reordering a manifest does not refit).
    """
    record = {"extractor": extractor.name, "version": extractor.version, "model_sha256": extractor.model_sha256,
              "params": extractor.fit_params(), "inputs": inputs}
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


E = TypeVar("E", bound=type[Extractor])
_REGISTRY: dict[str, type[Extractor]] = {}
DEFAULT_EXTRACTORS = {"text": "hf_text", "audio": "hf_audio", "face": "facenet"}
# the built-in extractors; each is defined by the module of its name, extractors/<name>.py, which
# shares its modality's input handling with its peers through extractors/<modality>.py
BUILT_IN = ("hf_text", "tfidf", "hf_audio", "opensmile", "facenet", "hf_face")


def register_extractor(cls: E) -> E:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"two extractors are registered as {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def get_extractor(name: str) -> type[Extractor]:
    """The extractor class registered as `name`, importing `extractors.<module>` if needed."""
    if name not in _REGISTRY and name.isidentifier():
        module = f"extractors.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    if name not in _REGISTRY:
        raise PipelineError(
            f"unknown extractor {name!r}; built in: {', '.join(sorted(BUILT_IN))} "
            f"(a new one is a module in extractors/ that registers itself)"
        )
    return _REGISTRY[name]


def extractor_for(modality: str, name: str = "") -> type[Extractor]:
    """The extractor to use for `modality`: `name` if given, else the modality's default."""
    if not name:
        if modality not in DEFAULT_EXTRACTORS:
            raise PipelineError(f"unknown modality {modality!r}; choose one of {', '.join(DEFAULT_EXTRACTORS)}")
        name = DEFAULT_EXTRACTORS[modality]
    cls = get_extractor(name)
    if cls.modality != modality:
        raise PipelineError(f"extractor {name!r} makes {cls.modality} features, not {modality}")
    return cls


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA on a machine without it is a clear error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise PipelineError(f"unknown device {setting!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            f"device {setting!r} was asked for but this machine has no usable CUDA GPU; set device: auto or cpu"
        )
    return device


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on a GPU (fp16 where bf16 is unsupported); a no-op context on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def weights_sha256(path: Path) -> str:
    """SHA-256 identifying a model's weights, as the feature store records it.

    A file hashes to its own SHA-256 (what `sha256sum` prints). A model folder hashes its
    *.safetensors / *.bin files, sorted by name, as one "<sha256>  <name>" line each (the text
    `sha256sum` prints for them), so renaming or resharding the weights changes it too. Configs and
    tokenizer files are not weights and are left out.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    weights = (p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    files = sorted(weights, key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {path}")
    listing = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


T = TypeVar("T")


def load_pretrained(role: str, model_id: str, load: Callable[..., T], param_key: str) -> tuple[T, Path]:
    """Call `load` (a `from_pretrained`) on a local folder or hub id; "cannot fetch" becomes one line.

    Returns the loaded object and the local folder its files came from (for `weights_sha256`).
    A hub id loads from the local Hugging Face cache first; the network is tried only when the hub
    answers within a few seconds, so an offline machine fails at once instead of after minutes of
    retries.
    """
    ensure_torchvision_ops()  # transformers' model modules import torchvision (see the shim)
    _quiet_transformers()
    local = Path(model_id).expanduser()
    if local.exists():
        if not local.is_dir():
            raise PipelineError(f"{role} model {model_id!r} is a file; give the folder that holds config.json")
        try:
            return load(str(local)), local
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{role} model folder {model_id!r} could not be loaded: {one_line(exc)}") from None
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise PipelineError(f"{role} model folder {model_id!r} does not exist (set {param_key} in params.yaml)")
    try:
        obj = load(model_id, local_files_only=True)
    except (OSError, ValueError) as cached_exc:
        reason = one_line(cached_exc)
        if not hub_reachable():
            reason = "the Hugging Face Hub is not reachable from this machine and the model is not in its cache"
        else:
            try:
                obj = load(model_id)
                reason = ""
            except (OSError, ValueError) as exc:
                reason = one_line(exc)
        if reason:
            raise PipelineError(
                f"{role} model {model_id!r} is not a local folder and could not be loaded ({reason}). "
                f"On a machine with internet run `hf download {model_id} --local-dir models/{model_id.split('/')[-1]}`, "
                f"copy that folder here and set {param_key} to it"
            ) from None
    from huggingface_hub import snapshot_download

    return obj, Path(snapshot_download(model_id, local_files_only=True))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (or HF_ENDPOINT) accepts a TCP connection; False when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _quiet_transformers() -> None:
    """transformers draws loading bars on stderr; keep them off when stderr is not a terminal."""
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# oneDNN, which runs torch's CPU convolutions, caches the kernel it builds for each input shape (1024
# of them by default). Speech gives a new shape per utterance, so with wav2vec2-base the cache alone
# held the extract stage at 3.9 GiB from 100 utterances on (bench/extract.py), against ~1 GiB for the model and
# one forward (README "Benchmarks", Memory). A small cache keeps the reuse that fixed shapes
# (face crops, padded text batches) get and bounds the rest; kernels, and so features, are the same.
ONEDNN_CACHE_CAPACITY = 32
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def bound_kernel_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> str:
    """Cap oneDNN's kernel cache, unless the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY; returns the
    capacity in force. oneDNN reads it when it builds its first kernel, so call this before any
    model runs in the process (the extract stage does, before it loads the model)."""
    return os.environ.setdefault(ONEDNN_CACHE_ENV, str(capacity))


def cpu_threads() -> int:
    """Cores this process may use (respects taskset / cgroup CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
