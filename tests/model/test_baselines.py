"""The baselines (model/mlp.py, model/bigru.py, model/late_fusion.py) and the registry: each learns,
masks padding and unavailable modalities, uses its context (or not) as documented, and rebuilds from
its config's JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model.batch import IGNORE_LABEL, DialogueBatch
from model.bigru import BiGRUConfig, DialogueBiGRU
from model.cmath import CMATH, CMATHConfig, CMATHOutput
from model.common import DialogueModelOutput
from model.late_fusion import LateFusion, LateFusionConfig
from model.mlp import MLPConfig, UtteranceMLP
from model.registry import DATA_FIELDS, DEFAULT_MODEL, MODELS, build_model, config_from_dict, model_names, model_spec

DIMS = {"text": 12, "audio": 10, "face": 8}
NUM_CLASSES = 4
NUM_SPEAKERS = 3
BASELINES = ["mlp", "bigru", "late_fusion"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def tiny_config(name: str, **overrides):
    values = dict(input_dims=dict(DIMS), num_classes=NUM_CLASSES, num_speakers=NUM_SPEAKERS, hidden_size=16,
                  dropout=0.1)
    values.update(overrides)
    return model_spec(name).config_class(**values)


def tiny_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, tiny_config(name, **overrides))


def make_batch(lengths=(7, 5, 3), seed: int = 0, missing_rate: float = 0.3, labeled: bool = True) -> DialogueBatch:
    """Random dialogues following the batch contract; some utterances lack a modality (text included)."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, length = len(lengths), max(lengths)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    features, available = {}, {}
    for m, dim in DIMS.items():
        present = mask & (torch.rand(batch_size, length, generator=generator) >= missing_rate)
        available[m] = present
        features[m] = torch.randn(batch_size, length, dim, generator=generator) * present.unsqueeze(-1)
    speakers = torch.randint(0, NUM_SPEAKERS, (batch_size, length), generator=generator).masked_fill(~mask, 0)
    labels = torch.randint(0, NUM_CLASSES, (batch_size, length), generator=generator).masked_fill(~mask, IGNORE_LABEL)
    if not labeled:
        labels.fill_(IGNORE_LABEL)
    ids = [[f"d{row}_u{i}" for i in range(n)] for row, n in enumerate(lengths)]
    return DialogueBatch(features, available, speakers, mask, labels, ids)


def padded(batch: DialogueBatch, length: int, garbage: float) -> DialogueBatch:
    """The same dialogues padded to `length`, with `garbage` in the padded feature slots and speaker ids
    and availability that a careless model would read."""
    extra = length - batch.mask.shape[1]

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        shape = list(t.shape)
        shape[1] = extra
        return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=1)

    return DialogueBatch({m: pad(f, garbage) for m, f in batch.features.items()},
                         {m: pad(a, True) for m, a in batch.available.items()},  # mask says padding: must win
                         pad(batch.speakers, NUM_SPEAKERS - 1), pad(batch.mask, False),
                         pad(batch.labels, IGNORE_LABEL), batch.utterance_ids)


def row(batch: DialogueBatch, index: int) -> DialogueBatch:
    """Dialogue `index` alone, cut to its own length."""
    n = int(batch.mask[index].sum())
    return DialogueBatch({m: f[index:index + 1, :n] for m, f in batch.features.items()},
                         {m: a[index:index + 1, :n] for m, a in batch.available.items()},
                         batch.speakers[index:index + 1, :n], batch.mask[index:index + 1, :n],
                         batch.labels[index:index + 1, :n], [batch.utterance_ids[index]])


# ------------------------------------------------------------------------------------- registry


def test_registry_names_every_model_with_cmath_the_default():
    assert model_names() == ["cmath", "mlp", "bigru", "late_fusion"] and DEFAULT_MODEL == "cmath"
    expected = {"cmath": (CMATHConfig, CMATH), "mlp": (MLPConfig, UtteranceMLP), "bigru": (BiGRUConfig, DialogueBiGRU),
                "late_fusion": (LateFusionConfig, LateFusion)}
    assert {name: (s.config_class, s.model_class) for name, s in MODELS.items()} == expected
    for name in model_names():
        config = tiny_config(name, **({"num_heads": 2} if name == "cmath" else {}))
        assert set(DATA_FIELDS) <= set(config.to_dict())
        assert isinstance(build_model(name, config), expected[name][1])
    with pytest.raises(ValueError, match=r"unknown model 'gru'; choose one of cmath, mlp, bigru, late_fusion"):
        model_spec("gru")
    with pytest.raises(TypeError, match="model 'bigru' takes a BiGRUConfig, got MLPConfig"):
        build_model("bigru", tiny_config("mlp"))


# ------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_overfits_one_batch(name):
    model = tiny_model(name, dropout=0.0, hidden_size=32)
    batch = make_batch(lengths=(7, 6, 4), seed=1, missing_rate=0.0)
    labeled = batch.labels != IGNORE_LABEL
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first_loss = model(batch).loss.item()
    for _ in range(150):
        output = model(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = model(batch)
    accuracy = (final.logits.argmax(-1)[labeled] == batch.labels[labeled]).float().mean().item()
    assert accuracy == 1.0, f"{name}: training accuracy {accuracy:.2f}"
    assert final.loss.item() < 0.1 * first_loss, (first_loss, final.loss.item())


@pytest.mark.parametrize("name", BASELINES)
def test_every_parameter_gets_a_gradient(name):
    model = tiny_model(name, dropout=0.0)
    model(make_batch(missing_rate=0.0)).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


# ------------------------------------------------------------------------------------- output and loss


@pytest.mark.parametrize("name", BASELINES)
def test_output_is_the_shared_type_with_only_the_classification_loss(name):
    model = tiny_model(name)
    output = model(make_batch())
    assert isinstance(output, DialogueModelOutput) and not isinstance(output, CMATHOutput)
    assert set(output.losses) == set(model.config.loss_weights) == {"ce"}
    assert output.loss is output.losses["ce"] and output.loss.dtype == torch.float32 and output.loss.item() > 0
    assert output.logits.shape == (3, 7, NUM_CLASSES)
    torch.testing.assert_close(output.probabilities.sum(-1), torch.ones(3, 7))
    assert issubclass(CMATHOutput, DialogueModelOutput)  # the trainer reads every model's output alike


@pytest.mark.parametrize("name", ["mlp", "bigru"])
def test_ce_is_the_class_weighted_cross_entropy_of_the_logits(name):
    weights = [1.0, 3.0, 0.5, 0.0]
    batch = make_batch()
    output = tiny_model(name, class_weights=weights).eval()(batch)
    expected = F.cross_entropy(output.logits.flatten(0, 1), batch.labels.flatten(), weight=torch.tensor(weights),
                               ignore_index=IGNORE_LABEL)
    torch.testing.assert_close(output.loss, expected)
    unweighted = tiny_model(name).eval()(batch)
    assert not torch.isclose(unweighted.loss, output.loss)


def test_late_fusion_ce_averages_each_classifiers_own_cross_entropy():
    weights = torch.tensor([1.0, 3.0, 0.5, 2.0])
    batch = make_batch(missing_rate=0.4)
    output = tiny_model("late_fusion", class_weights=weights.tolist()).eval()(batch)
    per_modality = []
    for m in DIMS:
        labels = batch.labels.masked_fill(~batch.available[m], IGNORE_LABEL)
        per_modality.append(F.cross_entropy(output.modality_logits[m].flatten(0, 1), labels.flatten(), weight=weights,
                                            ignore_index=IGNORE_LABEL))
    torch.testing.assert_close(output.loss, torch.stack(per_modality).mean())


def test_late_fusion_averages_the_probabilities_of_the_available_modalities_only():
    model = tiny_model("late_fusion").eval()
    batch = make_batch(missing_rate=0.4)
    batch.available["text"][0, 0] = batch.available["audio"][0, 0] = batch.available["face"][0, 0] = False
    output = model(batch)
    probabilities = output.probabilities
    checked = 0
    for b, n in zip(*torch.nonzero(batch.mask, as_tuple=True)):
        present = [m for m in DIMS if batch.available[m][b, n]]
        if not present:
            torch.testing.assert_close(probabilities[b, n], torch.full((NUM_CLASSES,), 1 / NUM_CLASSES))
            continue
        mean = torch.stack([output.modality_logits[m][b, n].softmax(-1) for m in present]).mean(0)
        torch.testing.assert_close(probabilities[b, n], mean)
        checked += len(present) < len(DIMS)
    assert checked > 0  # some utterances did lack a modality
    assert torch.isfinite(output.logits).all()


@pytest.mark.parametrize("name", BASELINES)
def test_unlabeled_batch_gives_no_loss(name):
    output = tiny_model(name)(make_batch(labeled=False))
    assert output.loss is None and output.losses == {}
    assert torch.isfinite(output.logits).all()
    output.logits.sum().backward()  # what the trainer does with a label-free batch: no NaN gradient
    assert all(torch.isfinite(p.grad).all() for p in tiny_model(name).parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("garbage", [1e3, math.nan], ids=["large", "nan"])
@pytest.mark.parametrize("name", BASELINES)
def test_padded_turns_do_not_change_the_outputs_of_real_turns(name, garbage):
    model = tiny_model(name).eval()
    batch = make_batch(lengths=(5, 3, 4))
    reference = model(batch)
    longer = model(padded(batch, 11, garbage))
    for index, n in enumerate((5, 3, 4)):
        torch.testing.assert_close(longer.logits[index, :n], reference.logits[index, :n])
        alone = model(row(batch, index)).logits
        torch.testing.assert_close(alone[0], reference.logits[index, :n], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(longer.loss, reference.loss)
    assert torch.isfinite(longer.logits).all()


@pytest.mark.parametrize("garbage", [10.0, math.nan], ids=["random", "nan"])
@pytest.mark.parametrize("name", BASELINES)
def test_features_of_unavailable_modalities_do_not_change_the_outputs(name, garbage):
    model = tiny_model(name).eval()
    batch = make_batch(missing_rate=0.4)
    reference = model(batch)
    for m in DIMS:
        unavailable = ~batch.available[m]
        assert unavailable[batch.mask].any()
        noise = torch.randn_like(batch.features[m]) * garbage if not math.isnan(garbage) else math.nan
        batch.features[m] = torch.where(unavailable.unsqueeze(-1), noise, batch.features[m])
    output = model(batch)
    torch.testing.assert_close(output.logits, reference.logits)
    torch.testing.assert_close(output.loss, reference.loss)
    # ... while the features of an available utterance do count
    b, n = torch.nonzero(batch.available["audio"] & batch.mask)[0].tolist()
    batch.features["audio"][b, n] += 3.0
    assert not torch.allclose(model(batch).logits[b, n], reference.logits[b, n])


@pytest.mark.parametrize("name", ["mlp", "bigru"])
def test_an_unavailable_modality_is_not_the_same_as_a_feature_of_zeros(name):
    """The availability bits are inputs: a model can tell a missing feature from a zero vector."""
    model = tiny_model(name).eval()
    batch = make_batch(missing_rate=0.0)
    reference = model(batch).logits
    batch.features["face"][0, 1] = 0.0
    zeros = model(batch).logits
    batch.available["face"][0, 1] = False
    missing = model(batch).logits
    assert not torch.allclose(missing[0, 1], zeros[0, 1])
    assert not torch.allclose(zeros[0, 1], reference[0, 1])


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("missing", ["face", "text"])
def test_a_modality_missing_everywhere_still_trains_the_others(name, missing):
    model = tiny_model(name)
    batch = make_batch()
    batch.available[missing] = torch.zeros_like(batch.available[missing])
    batch.features[missing] = torch.zeros_like(batch.features[missing])
    output = model(batch)
    assert torch.isfinite(output.loss) and torch.isfinite(output.logits).all()
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------- context


def test_bigru_reads_the_dialogue_in_both_directions_and_mlp_and_late_fusion_do_not():
    batch = make_batch(lengths=(6,), missing_rate=0.0)
    changed = make_batch(lengths=(6,), missing_rate=0.0)
    changed.features["text"][0, 3] += 2.0  # one utterance in the middle
    for name in BASELINES:
        model = tiny_model(name).eval()
        before, after = model(batch).logits[0], model(changed).logits[0]
        moved = [not torch.allclose(before[i], after[i]) for i in range(6)]
        if name == "bigru":
            assert moved == [True] * 6, moved  # earlier turns too: the backward direction
        else:
            assert moved == [False, False, False, True, False, False], (name, moved)


def test_bigru_speaker_ids_matter_only_with_the_speaker_embedding():
    batch = make_batch()
    swapped = make_batch()
    swapped.speakers = ((batch.speakers + 1) % NUM_SPEAKERS).masked_fill(~batch.mask, 0)
    with_speakers = tiny_model("bigru").eval()
    assert not torch.allclose(with_speakers(batch).logits, with_speakers(swapped).logits)
    without = tiny_model("bigru", use_speaker_embedding=False, num_speakers=0).eval()
    assert without.speaker_embedding is None and not any("speaker" in n for n, _ in without.named_parameters())
    torch.testing.assert_close(without(batch).logits, without(swapped).logits)
    for name in ("mlp", "late_fusion"):  # utterance-level models see no speaker
        model = tiny_model(name).eval()
        torch.testing.assert_close(model(batch).logits, model(swapped).logits)


def test_bigru_layers_and_dropout_between_them():
    deep = tiny_model("bigru", num_layers=2, dropout=0.2)
    assert deep.gru.num_layers == 2 and deep.gru.dropout == 0.2 and deep.gru.bidirectional
    assert tiny_model("bigru").gru.dropout == 0.0  # one layer: nothing between layers
    assert torch.isfinite(deep(make_batch()).loss)


# ------------------------------------------------------------------------------------- config and checks


@pytest.mark.parametrize("name", BASELINES)
def test_config_round_trips_through_sorted_json_and_rebuilds_the_same_model(name):
    """A checkpoint stores the config as key-sorted JSON: input_dims comes back in another order, and the
    rebuilt model must still read each modality where it was trained to."""
    config = tiny_config(name, class_weights=[1, 2, 3, 4], num_layers=2)
    restored = config_from_dict(name, json.loads(json.dumps(config.to_dict(), sort_keys=True)))
    assert restored == config and list(restored.input_dims) != list(config.input_dims)
    model = tiny_model(name, class_weights=[1, 2, 3, 4], num_layers=2).eval()
    rebuilt = build_model(name, restored).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    batch = make_batch()
    torch.testing.assert_close(rebuilt(batch).logits, model(batch).logits)
    with pytest.raises(ValueError, match=f"unknown {type(config).__name__} field"):
        config_from_dict(name, {**config.to_dict(), "num_heads": 2})


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("mlp", dict(class_weights=[1.0, 2.0]), "class_weights has 2 entries but num_classes is 4"),
        ("mlp", dict(class_weights=[0.0, 0.0, 0.0, 0.0]), "class_weights must be finite numbers >= 0, not all zero"),
        ("mlp", dict(hidden_size=0), "hidden_size must be a positive integer"),
        ("late_fusion", dict(num_layers=0), "num_layers must be a positive integer"),
        ("late_fusion", dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        ("bigru", dict(num_speakers=0), "num_speakers must be an integer >= 1"),
        ("bigru", dict(use_speaker_embedding="yes"), "use_speaker_embedding must be true or false"),
        ("bigru", dict(num_classes=1), "num_classes must be an integer >= 2"),
        ("mlp", dict(input_dims={}), "input_dims must be a non-empty dict"),
        ("mlp", dict(input_dims={"text": 0}), r"input_dims\['text'\] must be a positive integer"),
    ],
)
def test_invalid_config_raises_a_clear_error_starting_with_the_field(name, overrides, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        tiny_config(name, **overrides)


def test_utterance_level_configs_accept_zero_speakers():
    assert isinstance(tiny_model("mlp", num_speakers=0), UtteranceMLP)
    assert isinstance(tiny_model("late_fusion", num_speakers=0), LateFusion)


@pytest.mark.parametrize("name", BASELINES)
def test_batch_that_does_not_fit_the_model_raises(name):
    model = tiny_model(name)
    batch = make_batch()
    batch.features["audio"] = batch.features["audio"][..., :9]
    with pytest.raises(ValueError, match=r"batch.features\['audio'\] has shape"):
        model(batch)
    batch = make_batch()
    del batch.features["face"], batch.available["face"]
    with pytest.raises(ValueError, match="needs modality 'face'"):
        model(batch)


def test_bigru_checks_speaker_ids_and_that_padding_comes_last():
    model = tiny_model("bigru")
    batch = make_batch()
    batch.speakers[0, 0] = NUM_SPEAKERS
    with pytest.raises(ValueError, match="speaker ids must be in"):
        model(batch)
    batch = make_batch(lengths=(4, 2))
    batch.mask[1] = torch.tensor([False, True, True, False])
    with pytest.raises(ValueError, match="True on a prefix of each row"):
        model(batch)


@pytest.mark.parametrize("name", BASELINES)
def test_bf16_autocast_keeps_the_loss_in_float32(name):
    model = tiny_model(name)
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(batch)
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
