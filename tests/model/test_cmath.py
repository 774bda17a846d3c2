"""CMATH model: the API contract, each ablation flag, masking/padding behaviour and that it can learn."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model.batch import IGNORE_LABEL, DialogueBatch
from model.cmath import (
    CMATH,
    CMATHConfig,
    CMATHOutput,
    MaskedAttention,
    ModalityReconstruction,
    product_of_experts,
)

DIMS = {"text": 12, "audio": 10, "face": 8}
NUM_CLASSES = 4
NUM_SPEAKERS = 3
ALL_LOSSES = {"ce", "uni", "kd", "feat", "rec", "vae"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def tiny_config(**overrides) -> CMATHConfig:
    values = dict(
        input_dims=dict(DIMS), num_classes=NUM_CLASSES, num_speakers=NUM_SPEAKERS,
        hidden_size=32, num_layers=1, num_heads=2, dropout=0.1,
    )
    values.update(overrides)
    return CMATHConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> CMATH:
    torch.manual_seed(seed)
    return CMATH(tiny_config(**overrides))


def make_batch(
    lengths=(7, 5, 3), padded_to: int | None = None, seed: int = 0, dims=DIMS, missing_rate: float = 0.2,
    labeled: bool = True,
) -> DialogueBatch:
    """Random dialogues following the batch contract; some non-central utterances lack audio or face."""
    generator = torch.Generator().manual_seed(seed)
    batch_size, length = len(lengths), padded_to or max(lengths)
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    features, available = {}, {}
    for m, dim in dims.items():
        present = mask.clone()
        if m != "text":
            present &= torch.rand(batch_size, length, generator=generator) >= missing_rate
        available[m] = present
        features[m] = torch.randn(batch_size, length, dim, generator=generator) * present.unsqueeze(-1)
    speakers = torch.randint(0, NUM_SPEAKERS, (batch_size, length), generator=generator).masked_fill(~mask, 0)
    labels = torch.randint(0, NUM_CLASSES, (batch_size, length), generator=generator).masked_fill(~mask, IGNORE_LABEL)
    if not labeled:
        labels.fill_(IGNORE_LABEL)
    ids = [[f"d{row}_u{i}" for i in range(n)] for row, n in enumerate(lengths)]
    return DialogueBatch(features, available, speakers, mask, labels, ids)


def padded(batch: DialogueBatch, length: int, garbage: float = 0.0) -> DialogueBatch:
    """The same dialogues padded to `length`; padded feature slots filled with `garbage`."""
    extra = length - batch.mask.shape[1]

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        shape = list(t.shape)
        shape[1] = extra
        return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], dim=1)

    features = {m: pad(f, garbage) for m, f in batch.features.items()}
    available = {m: pad(a, False) for m, a in batch.available.items()}
    return DialogueBatch(features, available, pad(batch.speakers, 0), pad(batch.mask, False),
                         pad(batch.labels, IGNORE_LABEL), batch.utterance_ids)


def param_names(model: CMATH) -> set[str]:
    return {name for name, _ in model.named_parameters()}


def num_params(model: CMATH) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------- learning


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = CMATH(tiny_config(dropout=0.0))
    batch = make_batch(lengths=(7, 6, 4), seed=1)
    labeled = batch.labels != IGNORE_LABEL
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first_loss = None
    for step in range(300):
        model.train()
        output = model(batch)
        first_loss = first_loss if first_loss is not None else output.loss.item()
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        if step % 20 == 19:
            model.eval()
            with torch.no_grad():
                predictions = model(batch).logits.argmax(-1)
            if (predictions[labeled] == batch.labels[labeled]).all():
                break
    model.eval()
    with torch.no_grad():
        final = model(batch)
    accuracy = (final.logits.argmax(-1)[labeled] == batch.labels[labeled]).float().mean().item()
    assert accuracy >= 0.95, f"training accuracy {accuracy:.2f} after {step + 1} steps"
    assert final.loss.item() < first_loss


# ------------------------------------------------------------------------------------- losses


def test_all_loss_terms_finite_nonnegative_and_weighted_into_the_total():
    model = tiny_model()
    output = model(make_batch())
    assert isinstance(output, CMATHOutput)
    assert set(output.losses) == ALL_LOSSES
    for name, value in output.losses.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() >= 0, name
    config = model.config
    expected = (output.losses["ce"] + config.w_uni * output.losses["uni"] + config.w_kd * output.losses["kd"]
                + config.w_feat * output.losses["feat"] + config.w_rec * output.losses["rec"]
                + config.w_vae * output.losses["vae"])
    torch.testing.assert_close(output.loss, expected)
    assert output.logits.shape == (3, 7, NUM_CLASSES)
    assert set(output.modality_logits) == set(DIMS)
    assert all(t.shape == (3, 7, NUM_CLASSES) for t in output.modality_logits.values())
    torch.testing.assert_close(output.probabilities.sum(-1), torch.ones(3, 7))


def test_ce_is_class_weighted_cross_entropy_over_labeled_utterances():
    weights = [1.0, 3.0, 0.5, 0.0]
    model = tiny_model(class_weights=weights).eval()
    batch = make_batch()
    output = model(batch)
    expected = F.cross_entropy(output.logits.flatten(0, 1), batch.labels.flatten(),
                               weight=torch.tensor(weights), ignore_index=IGNORE_LABEL)
    torch.testing.assert_close(output.losses["ce"], expected)
    unweighted = tiny_model().eval()(batch)
    assert not torch.isclose(unweighted.losses["ce"], output.losses["ce"])


def _per_modality_mean(values: dict[str, torch.Tensor], where: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([values[m][where[m]].mean() for m in values]).mean()


def test_uni_kd_and_feat_follow_their_formulas():
    model = tiny_model().eval()  # eval: the coarse representation is the fused mean, the "feat" target
    batch = make_batch(missing_rate=0.3)
    output = model(batch)
    temperature = model.config.temperature
    valid = {m: batch.mask & batch.available[m] for m in DIMS}
    labeled = batch.labels != IGNORE_LABEL
    teacher = (output.logits / temperature).softmax(-1)
    kd, uni, feat = {}, {}, {}
    for m, student_logits in output.modality_logits.items():
        student = (student_logits / temperature).log_softmax(-1)
        kd[m] = (teacher * (teacher.log() - student)).sum(-1) * temperature**2  # KL(teacher || student)
        uni[m] = F.cross_entropy(student_logits.transpose(1, 2), batch.labels.clamp_min(0), reduction="none")
        projected = model.feature_projections[m](output.fine_representations[m])
        feat[m] = 1 - F.cosine_similarity(projected, output.coarse_representation, dim=-1)
    torch.testing.assert_close(output.losses["kd"], _per_modality_mean(kd, valid))
    labeled_valid = {m: v & labeled for m, v in valid.items()}
    torch.testing.assert_close(output.losses["uni"], _per_modality_mean(uni, labeled_valid))
    torch.testing.assert_close(output.losses["feat"], _per_modality_mean(feat, valid))


def test_rec_is_the_mse_to_the_raw_input_features_over_available_utterances():
    model = tiny_model().eval()
    batch = make_batch(missing_rate=0.3)
    output = model(batch)
    errors, valid = {}, {}
    for m in DIMS:
        valid[m] = batch.mask & batch.available[m]
        projected = model.input_projections[m](batch.features[m]) * valid[m].unsqueeze(-1)
        _, reconstructed = model.reconstruction[m](projected, valid[m])
        errors[m] = (reconstructed - batch.features[m]).pow(2).mean(-1)
    torch.testing.assert_close(output.losses["rec"], _per_modality_mean(errors, valid))


def test_vae_is_the_kl_of_the_fused_posterior_to_the_standard_normal():
    model = tiny_model().eval()
    batch = make_batch(missing_rate=0.3)
    output = model(batch)
    fine, fusion = output.fine_representations, model.fusion
    means = torch.stack([fusion.mean_heads[m](fine[m]) for m in DIMS])
    logvars = torch.stack([fusion.logvar_heads[m](fine[m]) for m in DIMS])
    mean, logvar = product_of_experts(means, logvars, torch.stack([batch.mask & batch.available[m] for m in DIMS]))
    torch.testing.assert_close(mean, output.coarse_representation)  # eval: the coarse representation is the mean
    variance = logvar.exp()
    kl = 0.5 * (variance + mean**2 - 1 - logvar).sum(-1)
    torch.testing.assert_close(output.losses["vae"], kl[batch.mask].mean())


def test_every_parameter_gets_a_gradient():
    """No dead component: each gate, head and embedding row in use is reached by the loss."""
    model = tiny_model(dropout=0.0)
    batch = make_batch(missing_rate=0.0)
    batch.speakers = torch.arange(batch.mask.numel()).view_as(batch.mask) % NUM_SPEAKERS
    model(batch).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_speaker_ids_matter_only_with_the_speaker_embedding():
    batch = make_batch()
    swapped = make_batch()
    swapped.speakers = (batch.speakers + 1) % NUM_SPEAKERS
    with_speakers = tiny_model().eval()
    assert not torch.allclose(with_speakers(batch).logits, with_speakers(swapped).logits)
    without = tiny_model(use_speaker_embedding=False).eval()
    torch.testing.assert_close(without(batch).logits, without(swapped).logits)


@pytest.mark.parametrize("positional", [True, False])
def test_positional_encoding_is_what_makes_utterance_order_matter(positional):
    """Without positions, speakers and the (convolutional) reconstruction, attention is order-blind."""
    model = tiny_model(use_positional_encoding=positional, use_speaker_embedding=False, use_reconstruction=False).eval()
    batch = make_batch(lengths=(6,), missing_rate=0.3)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = DialogueBatch({m: f[:, order] for m, f in batch.features.items()},
                             {m: a[:, order] for m, a in batch.available.items()},
                             batch.speakers[:, order], batch.mask[:, order], batch.labels[:, order], [[]])
    same = torch.allclose(model(batch).logits[:, order], model(shuffled).logits, atol=1e-5)
    assert same is not positional


def test_relative_positions_start_as_plain_attention_and_their_bias_orders_the_turns():
    """Zero-initialised, the distance bias changes nothing; learned, it lets order matter without any
    absolute position (the sinusoid, speakers and the convolutional reconstruction all off)."""
    order_blind = dict(use_positional_encoding=False, use_speaker_embedding=False, use_reconstruction=False)
    plain = tiny_model(**order_blind, use_relative_positions=False).eval()
    relative = tiny_model(**order_blind, use_relative_positions=True, max_relative_distance=2).eval()
    missing = relative.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all("relative_bias" in name for name in missing)
    batch = make_batch(lengths=(6,), missing_rate=0.0)
    torch.testing.assert_close(relative(batch).logits, plain(batch).logits)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = DialogueBatch({m: f[:, order] for m, f in batch.features.items()},
                             {m: a[:, order] for m, a in batch.available.items()},
                             batch.speakers[:, order], batch.mask[:, order], batch.labels[:, order], [[]])
    with torch.no_grad():
        for name, parameter in relative.named_parameters():
            if "relative_bias" in name:  # [2 * 2 + 1 distances, heads]: attend to the previous turn
                parameter.zero_()[1] = 8.0
    assert not torch.allclose(relative(batch).logits[:, order], relative(shuffled).logits, atol=1e-4)
    torch.testing.assert_close(plain(batch).logits[:, order], plain(shuffled).logits, atol=1e-5, rtol=1e-5)


def test_unlabeled_batch_gives_only_unsupervised_terms_and_no_total():
    output = tiny_model()(make_batch(labeled=False))
    assert output.loss is None
    assert set(output.losses) == {"kd", "feat", "rec", "vae"}
    assert all(torch.isfinite(v) for v in output.losses.values())


def test_distillation_teachers_are_detached():
    """"kd" must not train the fused classifier, and "feat" must not train the fusion (the teachers)."""
    model = tiny_model()
    output = model(make_batch())
    output.losses["kd"].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.fused_classifier.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.modality_classifiers.parameters())
    model.zero_grad()
    output.losses["feat"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.fusion.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.feature_projections.parameters())


# ------------------------------------------------------------------------------------- ablations

ABLATIONS = [
    # (config overrides, loss keys that disappear, name fragment of the parameters that disappear)
    (dict(use_reconstruction=False), {"rec"}, "reconstruction."),
    (dict(use_logit_distillation=False, use_unimodal_losses=False), {"kd", "uni"}, "modality_classifiers."),
    (dict(use_feature_distillation=False), {"feat"}, "feature_projections."),
    (dict(use_speaker_embedding=False), set(), "speaker_embedding."),
    (dict(use_relative_positions=False), set(), "relative_bias."),
]


@pytest.mark.parametrize("overrides, removed_losses, removed_fragment", ABLATIONS, ids=lambda v: str(v)[:40])
def test_flag_removes_its_parameters_and_loss_terms(overrides, removed_losses, removed_fragment):
    full, ablated = tiny_model(), tiny_model(**overrides)
    removed = param_names(full) - param_names(ablated)
    assert param_names(ablated) < param_names(full)
    assert removed and all(removed_fragment in name for name in removed)
    assert not any(removed_fragment in name for name in param_names(ablated))
    output = ablated(make_batch())
    assert set(output.losses) == ALL_LOSSES - removed_losses
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize("flag, key", [("use_unimodal_losses", "uni"), ("use_logit_distillation", "kd")])
def test_uni_and_kd_flags_each_remove_their_loss_term(flag, key):
    output = tiny_model(**{flag: False})(make_batch())
    assert set(output.losses) == ALL_LOSSES - {key}
    assert set(output.modality_logits) == set(DIMS)  # the classifiers still serve the other term


def test_without_cross_modal_attention_there_are_no_cross_attention_or_gate_parameters():
    full, ablated = tiny_model(), tiny_model(use_cross_modal_attention=False)
    assert any("cross_attention" in n for n in param_names(full))
    assert any("cross_gates" in n for n in param_names(full))
    assert not any("cross" in n for n in param_names(ablated))
    assert num_params(ablated) < num_params(full)
    output = ablated(make_batch())
    assert set(output.losses) == ALL_LOSSES
    assert torch.isfinite(output.loss)


def test_central_stream_without_cross_attention_ignores_the_auxiliaries():
    model = tiny_model(use_cross_modal_attention=False).eval()
    batch = make_batch()
    reference = model(batch).fine_representations["text"]
    batch.features["audio"] = batch.features["audio"] * 5.0 + 1.0 * batch.available["audio"].unsqueeze(-1)
    torch.testing.assert_close(model(batch).fine_representations["text"], reference)
    cross_model = tiny_model().eval()
    before = cross_model(make_batch()).fine_representations["text"]
    assert not torch.allclose(cross_model(batch).fine_representations["text"], before)


def test_concat_fusion_has_no_variational_parts_and_no_kl_term():
    full, ablated = tiny_model(), tiny_model(fusion="concat")
    assert any(n.startswith("fusion.mean_heads") for n in param_names(full))
    assert not any("mean_heads" in n or "logvar_heads" in n for n in param_names(ablated))
    output = ablated(make_batch())
    assert set(output.losses) == ALL_LOSSES - {"vae"}
    assert torch.isfinite(output.loss)


def test_no_modality_classifiers_means_no_modality_logits():
    model = tiny_model(use_logit_distillation=False, use_unimodal_losses=False)
    output = model(make_batch())
    assert output.modality_logits == {}
    assert set(output.losses) == {"ce", "feat", "rec", "vae"}


def test_everything_off_leaves_only_ce():
    model = tiny_model(use_reconstruction=False, use_logit_distillation=False, use_unimodal_losses=False,
                       use_feature_distillation=False, fusion="concat", use_cross_modal_attention=False)
    output = model(make_batch())
    assert set(output.losses) == {"ce"}
    torch.testing.assert_close(output.loss, output.losses["ce"])


# ------------------------------------------------------------------------------------- missing modalities


@pytest.mark.parametrize("missing", ["face", "text"])
def test_a_modality_missing_everywhere_still_trains_the_others(missing):
    model = tiny_model()
    batch = make_batch()
    batch.available[missing] = torch.zeros_like(batch.available[missing])
    batch.features[missing] = torch.zeros_like(batch.features[missing])
    output = model(batch)
    assert torch.isfinite(output.loss)
    assert all(torch.isfinite(v) for v in output.losses.values())
    assert torch.isfinite(output.logits).all()
    output.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
    for m in DIMS:
        grad = model.input_projections[m].linear.weight.grad
        if m == missing:
            assert grad is None or not grad.any()  # no input, nothing to learn
        else:
            assert grad is not None and grad.abs().sum() > 0, m


def test_dialogue_without_an_auxiliary_modality_gives_no_nan():
    """One row with no audio at all (every attention key masked) while other rows have audio."""
    model = tiny_model()
    batch = make_batch(missing_rate=0.0)
    batch.available["audio"][0] = False
    batch.features["audio"][0] = 0.0
    for mode, grad in ((model.train, True), (model.eval, True), (model.eval, False)):
        mode()
        with torch.set_grad_enabled(grad):  # eval without grad takes PyTorch's attention fast path
            output = model(batch)
        assert torch.isfinite(output.logits).all()
        assert all(torch.isfinite(t).all() for t in output.fine_representations.values())
        assert torch.isfinite(output.loss)


@pytest.mark.parametrize("training, grad", [(True, True), (False, False)])
def test_masked_attention_is_a_zero_update_for_rows_without_keys(training, grad):
    torch.manual_seed(0)
    attention = MaskedAttention(8, 2, dropout=0.0).train(training)
    query, key_value = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    key_valid = torch.tensor([[False] * 4, [True, True, False, False]])
    with torch.set_grad_enabled(grad):
        out = attention(query, key_value, key_valid)
        reference, _ = attention.attention(query[1:], key_value[1:, :2], key_value[1:, :2], need_weights=False)
    assert torch.equal(out[0], torch.zeros(3, 8))
    torch.testing.assert_close(out[1], reference[0])


@pytest.mark.parametrize("modality", ["face", "text"])
@pytest.mark.parametrize("overrides", [{}, {"use_reconstruction": False}], ids=["default", "no_reconstruction"])
def test_features_of_unavailable_utterances_are_ignored(modality, overrides):
    model = tiny_model(**overrides).eval()
    batch = make_batch(missing_rate=0.4)
    batch.available["text"][0, 2] = batch.available["text"][1, 0] = False  # the central modality may be missing too
    batch.features["text"] *= batch.available["text"].unsqueeze(-1)
    assert not batch.available[modality][batch.mask].all()
    reference = model(batch)
    unavailable = ~batch.available[modality]
    batch.features[modality] = torch.where(unavailable.unsqueeze(-1), torch.randn_like(batch.features[modality]) * 10,
                                           batch.features[modality])
    output = model(batch)
    torch.testing.assert_close(output.logits, reference.logits)
    for name, value in reference.losses.items():
        torch.testing.assert_close(output.losses[name], value)


def test_reconstruction_ignores_positions_that_are_not_present():
    torch.manual_seed(0)
    module = ModalityReconstruction(hidden_size=16, compressed_width=4, input_dim=6)
    hidden, present = torch.randn(2, 7, 16), torch.rand(2, 7) > 0.3
    representation, reconstructed = module(hidden, present)
    assert representation.shape == (2, 7, 16) and reconstructed.shape == (2, 7, 6)
    assert not representation[~present].any()
    scrambled = torch.where(present.unsqueeze(-1), hidden, torch.randn_like(hidden) * 100)
    representation2, reconstructed2 = module(scrambled, present)
    torch.testing.assert_close(representation2, representation)
    torch.testing.assert_close(reconstructed2[present], reconstructed[present])


# ------------------------------------------------------------------------------------- product of experts


def test_poe_one_expert_with_prior_matches_closed_form():
    torch.manual_seed(0)
    mean, logvar = torch.randn(1, 5, 6), torch.randn(1, 5, 6)
    fused_mean, fused_logvar = product_of_experts(mean, logvar, torch.ones(1, 5, dtype=torch.bool))
    variance = logvar.exp()[0]
    torch.testing.assert_close(fused_mean, mean[0] / (1.0 + variance))
    torch.testing.assert_close(fused_logvar.exp(), variance / (1.0 + variance))


def test_poe_two_experts_match_precision_weighting():
    torch.manual_seed(1)
    means, logvars = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    fused_mean, fused_logvar = product_of_experts(means, logvars, torch.ones(2, 4, dtype=torch.bool))
    precisions = (-logvars).exp()
    total = 1.0 + precisions.sum(0)
    torch.testing.assert_close(fused_mean, (means * precisions).sum(0) / total)
    torch.testing.assert_close(fused_logvar, -total.log())


def test_poe_unavailable_expert_is_the_same_as_omitting_it():
    torch.manual_seed(2)
    means, logvars = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    available = torch.ones(3, 4, dtype=torch.bool)
    available[1] = False
    means[1], logvars[1] = 1e3, -50.0  # garbage where unavailable must not matter
    with_unavailable = product_of_experts(means, logvars, available)
    omitted = product_of_experts(means[[0, 2]], logvars[[0, 2]], available[[0, 2]])
    torch.testing.assert_close(with_unavailable[0], omitted[0])
    torch.testing.assert_close(with_unavailable[1], omitted[1])
    nobody = product_of_experts(means, logvars, torch.zeros(3, 4, dtype=torch.bool))
    torch.testing.assert_close(nobody[0], torch.zeros(4, 5))  # only the N(0, I) prior is left
    torch.testing.assert_close(nobody[1], torch.zeros(4, 5))


# ------------------------------------------------------------------------------------- padding, modes


@pytest.mark.parametrize(
    "overrides",
    [{}, {"fusion": "concat", "use_cross_modal_attention": False}, {"use_relative_positions": True}],
    ids=["default", "ablated", "relative_positions"],
)
def test_logits_of_real_utterances_do_not_depend_on_padding(overrides):
    model = tiny_model(**overrides).eval()
    batch = make_batch(lengths=(5, 3, 4))
    short = model(batch).logits
    longer = model(padded(batch, 12, garbage=3.0)).logits
    for row, n in enumerate((5, 3, 4)):
        assert torch.allclose(short[row, :n], longer[row, :n], atol=1e-5), row
    alone = model(DialogueBatch({m: f[1:2, :3] for m, f in batch.features.items()},
                                {m: a[1:2, :3] for m, a in batch.available.items()},
                                batch.speakers[1:2, :3], batch.mask[1:2, :3], batch.labels[1:2, :3], [[]])).logits
    assert torch.allclose(alone[0], short[1, :3], atol=1e-5)


def test_eval_is_deterministic_and_train_samples_the_fused_representation():
    model = tiny_model(dropout=0.0)
    batch = make_batch()
    model.eval()
    torch.testing.assert_close(model(batch).logits, model(batch).logits, rtol=0, atol=0)
    model.train()
    first, second = model(batch), model(batch)
    assert not torch.allclose(first.coarse_representation, second.coarse_representation)
    assert not torch.allclose(first.logits, second.logits)
    torch.testing.assert_close(first.fine_representations["text"], second.fine_representations["text"])
    concat = tiny_model(dropout=0.0, fusion="concat").train()
    torch.testing.assert_close(concat(batch).logits, concat(batch).logits)  # no sampling without "poe"


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(central_modality="video"), "central_modality 'video'"),
        (dict(input_dims={}), "input_dims must be a non-empty dict"),
        (dict(input_dims={"text": 0, "audio": 4}), r"input_dims\['text'\] must be a positive integer"),
        (dict(input_dims={"text": 12.5}), r"input_dims\['text'\]"),
        (dict(fusion="sum"), "fusion must be one of"),
        (dict(hidden_size=30, num_heads=4), "divisible by num_heads"),
        (dict(num_layers=0), "num_layers must be a positive integer"),
        (dict(num_classes=1), "num_classes must be an integer >= 2"),
        (dict(num_speakers=0), "num_speakers must be an integer >= 1"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(temperature=0.0), "temperature must be a positive number"),
        (dict(w_kd=-0.1), "w_kd must be a finite number >= 0"),
        (dict(w_vae=float("nan")), "w_vae must be a finite number"),
        (dict(reconstruction_width=64), "reconstruction_width must be an integer in"),
        (dict(class_weights=[1.0, 2.0]), "class_weights has 2 entries but num_classes is 4"),
        (dict(class_weights=[1.0, -1.0, 1.0, 1.0]), "class_weights must be finite numbers >= 0"),
        (dict(use_reconstruction="no"), "use_reconstruction must be true or false"),
        (dict(use_relative_positions="yes"), "use_relative_positions must be true or false"),
        (dict(max_relative_distance=0), "max_relative_distance must be a positive integer"),
    ],
)
def test_invalid_config_raises_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_speakerless_config_may_have_zero_speakers():
    config = tiny_config(use_speaker_embedding=False, num_speakers=0)
    assert CMATH(config).speaker_embedding is None


def test_config_round_trips_through_json_and_rebuilds_the_same_model():
    config = tiny_config(central_modality="audio", fusion="concat", class_weights=[1, 2, 3, 4], reconstruction_width=8)
    restored = CMATHConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert list(restored.input_dims) == list(config.input_dims)
    assert restored.compressed_width == 8
    model = CMATH(config).eval()
    rebuilt = CMATH(restored).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    batch = make_batch()
    torch.testing.assert_close(rebuilt(batch).logits, model(batch).logits)
    with pytest.raises(ValueError, match="unknown CMATHConfig field"):
        CMATHConfig.from_dict({**config.to_dict(), "use_magic": True})


def test_batch_that_does_not_fit_the_model_raises():
    model = tiny_model()
    batch = make_batch(dims={"text": 12, "audio": 9, "face": 8})
    with pytest.raises(ValueError, match=r"batch.features\['audio'\] has shape"):
        model(batch)
    batch = make_batch(dims={"text": 12, "audio": 10})
    with pytest.raises(ValueError, match="needs modality 'face'"):
        model(batch)
    batch = make_batch()
    batch.speakers[0, 0] = NUM_SPEAKERS
    with pytest.raises(ValueError, match="speaker ids must be in"):
        model(batch)


def test_extra_modalities_in_the_batch_are_ignored():
    model = tiny_model(input_dims={"text": 12, "audio": 10})
    output = model(make_batch())
    assert set(output.modality_logits) == {"text", "audio"}
    assert torch.isfinite(output.loss)


def test_central_modality_is_configurable():
    model = tiny_model(central_modality="audio")
    names = param_names(model)
    assert any(n.startswith("encoder.central_layers.0.cross_attention.text.") for n in names)
    assert any(n.startswith("encoder.central_layers.0.cross_attention.face.") for n in names)
    assert not any("cross_attention.audio" in n for n in names)
    assert any(n.startswith("encoder.auxiliary_layers.text.") for n in names)
    assert not any(n.startswith("encoder.auxiliary_layers.audio.") for n in names)
    batch = make_batch()
    output = model(batch)
    assert torch.isfinite(output.loss)
    # the audio stream now sees text: changing text changes the audio representation
    model.eval()
    before = model(batch).fine_representations["audio"]
    batch.features["text"] = batch.features["text"] + 1.0 * batch.available["text"].unsqueeze(-1)
    assert not torch.allclose(model(batch).fine_representations["audio"], before)


def test_single_modality_model_works():
    model = tiny_model(input_dims={"text": 12})
    output = model(make_batch())
    assert torch.isfinite(output.loss)
    assert not any("cross" in n for n in param_names(model))
    assert math.isfinite(output.losses["vae"].item())


def test_bf16_autocast_keeps_losses_in_float32():
    model = tiny_model()
    batch = make_batch(missing_rate=0.3)
    batch.available["audio"][0] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(batch)
    assert output.logits.dtype == torch.bfloat16  # the network ran in bf16 ...
    assert output.loss.dtype == torch.float32  # ... the losses did not
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in output.losses.values())
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
