"""Checkpoints of every model (pipeline/training/checkpoint.py): `load_model` rebuilds the model the
checkpoint names with its weights; a checkpoint from before models had names is CMATH's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.batch import IGNORE_LABEL, DialogueBatch
from model.cmath import CMATH
from model.registry import MODELS, build_model, model_names, model_spec
from pipeline.core.errors import PipelineError
from pipeline.formats.run_files import CHECKPOINT_JSON
from pipeline.training.checkpoint import BestCheckpoint, checkpoint_model_name, load_model

DIMS = {"text": 6, "audio": 5, "face": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def config_of(name: str):
    extra = {"num_heads": 2} if name == "cmath" else {}
    return model_spec(name).config_class(input_dims=dict(DIMS), num_classes=3, num_speakers=2, hidden_size=8, **extra)


def batch() -> DialogueBatch:
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    available = {m: mask & (torch.rand(2, 3, generator=generator) > 0.2) for m in DIMS}
    features = {m: torch.randn(2, 3, d, generator=generator) * available[m].unsqueeze(-1) for m, d in DIMS.items()}
    labels = torch.tensor([[0, 1, 2], [2, 1, IGNORE_LABEL]])
    speakers = torch.tensor([[1, 0, 1], [1, 1, 0]])
    return DialogueBatch(features, available, speakers, mask, labels, [["a"] * 3, ["b"] * 2])


def write_checkpoint(folder: Path, name: str | None, seed: int = 0) -> torch.nn.Module:
    """A checkpoint folder as the trainer writes it (BestCheckpoint), holding a fresh model `name`;
    name None: a record without `model_name`, as written before models had names (CMATH)."""
    torch.manual_seed(seed)
    config = config_of(name or "cmath")
    model = build_model(name or "cmath", config).eval()
    record = {"model_config": json.loads(json.dumps(config.to_dict(), sort_keys=True)), "epoch": 1}
    if name is not None:
        record["model_name"] = name
    BestCheckpoint({k: v.contiguous() for k, v in model.state_dict().items()}, None, record).write(folder)
    return model


@pytest.mark.parametrize("name", model_names())
def test_load_model_rebuilds_the_named_model_with_its_weights(tmp_path, name):
    original = write_checkpoint(tmp_path / "best", name)
    loaded, record = load_model(tmp_path / "best")
    assert type(loaded) is MODELS[name].model_class and record["model_name"] == name
    assert loaded.config == original.config
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch()).logits, original(batch()).logits)
    other = build_model(name, config_of(name)).eval()  # other weights give other logits: the weights were loaded
    assert not torch.allclose(other(batch()).logits, loaded(batch()).logits)


def test_a_checkpoint_without_a_model_name_loads_as_cmath(tmp_path):
    original = write_checkpoint(tmp_path / "best", None)
    record = json.loads((tmp_path / "best" / CHECKPOINT_JSON).read_text())
    assert "model_name" not in record and checkpoint_model_name(record) == "cmath"
    loaded, _ = load_model(tmp_path / "best")
    assert type(loaded) is CMATH
    torch.testing.assert_close(loaded.eval()(batch()).logits, original(batch()).logits)


def test_a_checkpoint_naming_an_unknown_model_is_a_one_line_error(tmp_path):
    write_checkpoint(tmp_path / "best", "mlp")
    path = tmp_path / "best" / CHECKPOINT_JSON
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_name": "transformer_xl"}))
    with pytest.raises(PipelineError) as error:
        load_model(tmp_path / "best")
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "'transformer_xl'" in message
    assert "cmath, mlp, bigru, late_fusion" in message


def test_weights_of_another_model_do_not_load_silently(tmp_path):
    """A checkpoint whose model_name was changed by hand holds weights that do not fit: loading fails."""
    write_checkpoint(tmp_path / "best", "mlp")
    path = tmp_path / "best" / CHECKPOINT_JSON
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "model_name": "late_fusion"}))
    with pytest.raises(RuntimeError, match="state_dict"):
        load_model(tmp_path / "best")
