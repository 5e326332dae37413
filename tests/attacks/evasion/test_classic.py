"""Contracts of the four classic attacks, on the shipped LeNet and real Fashion-MNIST images."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlwarden.attacks import BIM, FGSM, JSMA, DeepFool
from mlwarden.errors import ParameterError

# (attack factory, call keywords, targeted mode supported)
ATTACKS = {
    "fgsm": (lambda: FGSM(), {"eps": 0.1}, True),
    "bim": (lambda: BIM(steps=10), {"eps": 0.1}, True),
    "deepfool": (lambda: DeepFool(steps=50), {}, False),
    "jsma": (lambda: JSMA(theta=1.0, gamma=0.1), {}, True),
}


def run(name, model, inputs, labels, targets=None, **extra):
    factory, keywords, _ = ATTACKS[name]
    return factory()(model, inputs, labels, targets, **{**keywords, **extra})


@pytest.mark.parametrize("name", list(ATTACKS))
def test_output_in_bounds_and_budget(name, lenet, small_batch):
    inputs, labels = small_batch
    result = run(name, lenet, inputs, labels)
    assert float(result.adversarial.min()) >= 0.0
    assert float(result.adversarial.max()) <= 1.0
    if "eps" in ATTACKS[name][1]:
        # Exact in float32: no rounding excess such as 0.10000002 for a budget of 0.1.
        assert bool(((result.adversarial - inputs).abs() <= 0.1).all())


@pytest.mark.parametrize("name", list(ATTACKS))
def test_reported_success_is_real(name, lenet, small_batch):
    inputs, labels = small_batch
    result = run(name, lenet, inputs, labels)
    with torch.no_grad():
        fresh = lenet(result.adversarial).argmax(1)
    assert torch.equal(fresh, result.predictions)
    assert torch.equal(result.success, fresh != labels)
    assert int((result.success & result.attacked).sum()) > 0


@pytest.mark.parametrize("name", [n for n, entry in ATTACKS.items() if entry[2]])
def test_targeted_success_means_target_class(name, lenet, small_batch):
    inputs, labels = small_batch
    targets = (labels + 3) % 10
    result = run(name, lenet, inputs, labels, targets)
    with torch.no_grad():
        fresh = lenet(result.adversarial).argmax(1)
    assert torch.equal(result.success, fresh == targets)
    # A wrong class other than the target is not a success.
    wrong_but_not_target = (fresh != labels) & (fresh != targets)
    assert not bool((result.success & wrong_but_not_target).any())


@pytest.mark.parametrize("name", list(ATTACKS))
def test_accuracy_drops_sharply(name, lenet, fashion_test):
    inputs, labels = fashion_test.images[:200], fashion_test.labels[:200]
    result = run(name, lenet, inputs, labels)
    clean = float((result.clean_predictions == labels).float().mean())
    assert clean > 0.8
    assert result.accuracy < clean - 0.5


@pytest.mark.parametrize("name", list(ATTACKS))
def test_misclassified_inputs_left_unchanged(name, lenet, small_batch):
    inputs, labels = small_batch
    with torch.no_grad():
        predictions = lenet(inputs).argmax(1)
    wrong_labels = (predictions + 1) % 10  # every clean input is "already misclassified"
    result = run(name, lenet, inputs, wrong_labels)
    assert bool(result.already_adversarial.all())
    assert torch.equal(result.adversarial, inputs)
    # FGSM takes its one gradient in the pass that gives the clean prediction; the others spend none.
    assert result.cost.gradients == (len(inputs) if name == "fgsm" else 0)


def test_fgsm_clean_prediction_from_gradient_pass(lenet, small_batch):
    inputs, labels = small_batch
    result = FGSM()(lenet, inputs, labels, eps=0.1)
    with torch.no_grad():
        expected = lenet(inputs).argmax(1)
        fresh = lenet(result.adversarial).argmax(1)
    assert torch.equal(result.clean_predictions, expected)
    assert torch.equal(result.predictions, fresh)
    assert result.cost.gradients == len(inputs)
    assert result.cost.queries == len(inputs)


def test_fgsm_label_out_of_range_error(lenet, small_batch):
    inputs, labels = small_batch
    with pytest.raises(ParameterError, match="labels must be classes 0 to 9"):
        FGSM()(lenet, inputs, torch.full_like(labels, 12), eps=0.1)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_sample_result_independent_of_batch(name, lenet, small_batch):
    inputs, labels = small_batch
    together = run(name, lenet, inputs[:16], labels[:16])
    alone = [run(name, lenet, inputs[i : i + 1], labels[i : i + 1]) for i in (0, 5, 11)]
    for position, single in zip((0, 5, 11), alone):
        assert bool(single.success[0]) == bool(together.success[position])
        torch.testing.assert_close(single.adversarial[0], together.adversarial[position], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_same_call_same_result(name, lenet, small_batch):
    inputs, labels = small_batch
    first = run(name, lenet, inputs, labels)
    second = run(name, lenet, inputs, labels)
    assert torch.equal(first.adversarial, second.adversarial)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_model_modes_restored(name, lenet, small_batch):
    inputs, labels = small_batch
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), lenet)
    model.train()
    lenet.conv.eval()  # a deliberately mixed state must come back exactly
    before = {name_: module.training for name_, module in model.named_modules()}
    parameters = {key: value.clone() for key, value in model.state_dict().items()}
    run(name, model, inputs[:8], labels[:8])
    after = {name_: module.training for name_, module in model.named_modules()}
    lenet.eval()
    assert before == after
    for key, value in model.state_dict().items():
        assert torch.equal(value, parameters[key])


def test_untargeted_attack_rejects_targets(lenet, small_batch):
    inputs, labels = small_batch
    with pytest.raises(ParameterError, match="untargeted only"):
        DeepFool()(lenet, inputs, labels, labels)


def test_inputs_outside_bounds_rejected(lenet, small_batch):
    inputs, labels = small_batch
    with pytest.raises(ParameterError, match="outside the bounds"):
        FGSM()(lenet, inputs * 2 - 1, labels, eps=0.1)


def test_missing_eps_rejected(lenet, small_batch):
    inputs, labels = small_batch
    with pytest.raises(ParameterError, match="eps is required"):
        FGSM()(lenet, inputs, labels)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: BIM(steps=0), "steps must be an integer >= 1, got 0"),
        (lambda: BIM(step_size=-0.1), "step_size must be a number > 0"),
        (lambda: DeepFool(overshoot=-1), "overshoot must be a number >= 0"),
        (lambda: DeepFool(candidates=1), "candidates must be an integer >= 2"),
        (lambda: JSMA(gamma=0), r"gamma must be a number in \(0, 1\]"),
        (lambda: JSMA(gamma=1.5), r"gamma must be a number in \(0, 1\]"),
        (lambda: JSMA(theta=0), "theta must be non-zero"),
        (lambda: JSMA(saliency="both"), "saliency must be one of 'target', 'pair'"),
        (lambda: JSMA(theta=2), r"theta must be a number in \[-1, 1\]"),
        (lambda: BIM(steps=2.5), "steps must be an integer"),
        (lambda: BIM(early_stop="yes"), "early_stop must be True or False"),
    ],
)
def test_constructor_rejects_bad_settings(build, message):
    with pytest.raises(ParameterError, match=message):
        build()


def test_negative_eps_rejected(lenet, small_batch):
    inputs, labels = small_batch
    with pytest.raises(ParameterError, match="eps must be a number >= 0, got -0.1"):
        FGSM()(lenet, inputs, labels, eps=-0.1)


def test_eps_sweep_returns_one_result_per_budget(lenet, small_batch):
    inputs, labels = small_batch
    results = BIM()(lenet, inputs, labels, eps=[0.01, 0.05, 0.2])
    assert [r.eps for r in results] == [0.01, 0.05, 0.2]
    accuracies = [r.accuracy for r in results]
    assert accuracies[0] >= accuracies[1] >= accuracies[2]
    for result in results:
        assert float(result.linf.max()) <= result.eps + 1e-6


def test_bim_projects_around_original_input(lenet, small_batch):
    inputs, labels = small_batch
    # Steps larger than eps: a projection around the previous iterate would drift past eps.
    result = BIM(steps=20, step_size=0.05, early_stop=False)(lenet, inputs, labels, eps=0.03)
    assert float(result.linf.max()) <= 0.03 + 1e-6


def test_bim_steps_change_result(lenet, small_batch):
    inputs, labels = small_batch
    one = BIM(steps=1, step_size=0.01)(lenet, inputs, labels, eps=0.1)
    many = BIM(steps=10, step_size=0.01)(lenet, inputs, labels, eps=0.1)
    assert many.accuracy < one.accuracy


def test_bim_early_stop_changes_result(lenet, small_batch):
    inputs, labels = small_batch
    stopped = BIM(steps=10, early_stop=True)(lenet, inputs, labels, eps=0.1)
    full = BIM(steps=10, early_stop=False)(lenet, inputs, labels, eps=0.1)
    assert stopped.cost.gradients < full.cost.gradients
    assert float(stopped.l2[stopped.success].mean()) < float(full.l2[full.success].mean())


def test_deepfool_overshoot_changes_result(lenet, small_batch):
    inputs, labels = small_batch
    small = DeepFool(overshoot=0.0)(lenet, inputs, labels)
    large = DeepFool(overshoot=0.5)(lenet, inputs, labels)
    assert float(large.l2[large.success].mean()) > float(small.l2[small.success].mean())


def test_deepfool_matches_closed_form_on_affine_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    inputs = torch.randn(32, 6, dtype=torch.float64)
    with torch.no_grad():
        logits = model(inputs)
    labels = logits.argmax(1)
    result = DeepFool(steps=5, overshoot=0.0)(model, inputs.float().double(), labels, bounds=(-1e3, 1e3))

    # The minimal L2 distance to leaving the region of class l is min_k |f_k - f_l| / ||w_k - w_l||.
    weight = model.weight.detach()
    expected = []
    for row, label in zip(logits, labels.tolist()):
        distances = [
            abs(float(row[k] - row[label])) / float((weight[k] - weight[label]).norm())
            for k in range(4)
            if k != label
        ]
        expected.append(min(distances))
    expected = torch.tensor(expected, dtype=torch.float64)
    assert bool(result.success.all())
    torch.testing.assert_close(result.l2.double(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("saliency", ["target", "pair"])
def test_jsma_changes_at_most_gamma_of_pixels(saliency, lenet, fashion_test):
    inputs, labels = fashion_test.images[:64], fashion_test.labels[:64]
    for gamma in (0.02, 0.1):
        result = JSMA(gamma=gamma, saliency=saliency)(lenet, inputs, labels)
        assert float(result.l0.max()) <= math.floor(gamma * 784)


def test_jsma_target_map_beats_pair_map(lenet, fashion_test):
    inputs, labels = fashion_test.images[:100], fashion_test.labels[:100]
    targets = (labels + 1) % 10
    by_target = JSMA(saliency="target")(lenet, inputs, labels, targets)
    by_pair = JSMA(saliency="pair")(lenet, inputs, labels, targets)
    assert bool((by_target.predictions[by_target.success] == targets[by_target.success]).all())
    assert by_target.success_rate > by_pair.success_rate


def test_jsma_target_map_picks_two_largest():
    gain = torch.tensor([[0.5, 3.0, 2.0, 9.0], [1.0, -2.0, 0.0, 4.0]])
    domain = torch.tensor([[True, True, True, False], [False, True, False, True]])
    first, second, found = JSMA._top_two(gain, domain)
    assert first.tolist() == [1, 3]
    assert second.tolist() == [2, 1]
    assert found.tolist() == [True, True]


def test_jsma_gamma_changes_result(lenet, small_batch):
    inputs, labels = small_batch
    tight = JSMA(gamma=0.02)(lenet, inputs, labels)
    loose = JSMA(gamma=0.1)(lenet, inputs, labels)
    assert loose.success_rate > tight.success_rate


@pytest.mark.parametrize(("saliency", "backward_passes"), [("target", 1), ("pair", 2)])
def test_jsma_stops_when_no_pixel_is_admissible(saliency, backward_passes, lenet):
    white = torch.ones(8, 1, 28, 28)
    with torch.no_grad():
        predictions = lenet(white).argmax(1)
    result = JSMA(theta=1.0, gamma=1.0, saliency=saliency)(lenet, white, predictions)
    # Every pixel is at the upper bound, so nothing can increase: no gradient step beyond the first check.
    assert torch.equal(result.adversarial, white)
    assert result.cost.gradients == backward_passes * 8


def test_jsma_negative_theta_darkens(lenet, small_batch):
    inputs, labels = small_batch
    result = JSMA(theta=-1.0, gamma=0.05)(lenet, inputs, labels)
    assert float((result.adversarial - inputs).max()) <= 0.0
    assert result.success_rate > 0.2


def test_jsma_exact_search_finds_best_pair():
    torch.manual_seed(1)
    gain = torch.randn(5, 300)
    loss = torch.randn(5, 300)
    domain = torch.rand(5, 300) > 0.2
    first, second, found = JSMA._best_pairs(gain, loss, domain, True)
    pair_gain = gain[:, :, None] + gain[:, None, :]
    pair_loss = loss[:, :, None] + loss[:, None, :]
    admissible = (pair_gain > 0) & (pair_loss > 0) & domain[:, :, None] & domain[:, None, :]
    admissible &= ~torch.eye(300, dtype=torch.bool)
    brute = torch.where(admissible, pair_gain * pair_loss, torch.tensor(float("-inf"))).flatten(1).max(1).values
    rows = torch.arange(5)
    chosen = (gain[rows, first] + gain[rows, second]) * (loss[rows, first] + loss[rows, second])
    assert bool(found.all())
    assert bool((first != second).all())
    torch.testing.assert_close(chosen, brute)


@pytest.mark.parametrize("name", ["fgsm", "bim", "jsma"])
def test_attacks_respect_other_bounds(name, lenet, small_batch):
    inputs, labels = small_batch

    class Shifted(torch.nn.Module):
        bounds = (-1.0, 1.0)

        def forward(self, x):
            return lenet((x + 1) / 2)

    model = Shifted()
    result = run(name, model, inputs * 2 - 1, labels)
    assert float(result.adversarial.min()) >= -1.0
    assert float(result.adversarial.max()) <= 1.0
    assert result.success_rate > 0.5


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(min_value=0.0, max_value=0.5),
    seed=st.integers(min_value=0, max_value=2**16),
    low=st.sampled_from([-1.0, 0.0]),
)
def test_fgsm_within_ball_and_bounds_property(eps, seed, low):
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    inputs = low + (1.0 - low) * torch.rand(6, 1, 3, 4, generator=generator)
    labels = torch.randint(0, 3, (6,), generator=generator)
    result = FGSM()(model, inputs, labels, eps=eps, bounds=(low, 1.0))
    assert float(result.adversarial.min()) >= low
    assert float(result.adversarial.max()) <= 1.0
    assert float(result.linf.max()) <= eps + 1e-6


@pytest.mark.parametrize("role", ["labels", "targets"])
def test_classes_the_model_lacks_rejected(role, lenet, small_batch):
    inputs, labels = small_batch
    wrong = torch.full_like(labels, 12)
    call = (labels, wrong) if role == "targets" else (wrong, None)
    with pytest.raises(ParameterError, match=f"{role} must be classes 0 to 9 .* got 12"):
        BIM(steps=2)(lenet, inputs[:4], call[0][:4], None if call[1] is None else call[1][:4], eps=0.1)


def test_target_equal_to_label_warned_and_left_alone(lenet, small_batch, caplog):
    inputs, labels = small_batch
    with caplog.at_level("WARNING", logger="mlwarden.attacks.base"):
        result = BIM(steps=2)(lenet, inputs[:8], labels[:8], labels[:8], eps=0.1)
    assert "8 of 8 targets equal the true label" in caplog.text
    assert torch.equal(result.adversarial[~result.attacked], inputs[:8][~result.attacked])


@pytest.mark.parametrize("name", ["fgsm", "bim"])
def test_target_equal_to_label_never_repairs(name, lenet, small_batch):
    inputs, _ = small_batch
    with torch.no_grad():
        predictions = lenet(inputs).argmax(1)
    labels = (predictions + 1) % 10  # every input misclassified
    factory, keywords, _ = ATTACKS[name]
    result = factory()(lenet, inputs, labels, labels.clone(), **keywords)
    assert torch.equal(result.adversarial, inputs)
    assert not bool(result.success.any())
    assert torch.equal(result.predictions, predictions)


def test_nan_inputs_rejected(lenet, small_batch):
    inputs, labels = small_batch
    inputs = inputs[:4].clone()
    inputs[2, 0, 5, 5] = float("nan")
    with pytest.raises(ParameterError, match="NaN values in 1 samples \\(the first is sample 2\\)"):
        FGSM()(lenet, inputs, labels[:4], eps=0.1)


def test_bounds_attribute_named_when_inputs_exceed_it(small_batch):
    inputs, labels = small_batch
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    model.bounds = (0.0, 0.5)
    with pytest.raises(ParameterError, match="model's bounds attribute declares; make the model's bounds match"):
        FGSM()(model, inputs, labels, eps=0.1)


def test_apgd_errors_use_the_command_line_name():
    from mlwarden.attacks import APGD

    with pytest.raises(ParameterError, match=r"^apgd-dlr \(AutoProjectedGradientDescent\): steps"):
        APGD(loss="dlr", steps=0)


class _MeanBrightness(torch.nn.Module):
    """Scores two classes by the mean pixel: the backward pass of ``sum`` gives an expanded (stride 0) gradient."""

    def forward(self, inputs):
        mean = inputs.sum(dim=(1, 2, 3)) / inputs[0].numel()
        return torch.stack([mean, 1 - mean], dim=1) * 10


def test_fgsm_expanded_gradient():
    inputs = torch.full((3, 1, 4, 4), 0.4)
    labels = torch.zeros(3, dtype=torch.int64)  # class 0 wins above a mean of 0.5
    result = FGSM()(_MeanBrightness(), inputs, labels, eps=0.2)
    assert bool(result.already_adversarial.all())
    result = FGSM()(_MeanBrightness(), inputs, torch.ones(3, dtype=torch.int64), eps=0.2)
    assert torch.allclose(result.adversarial, torch.full_like(inputs, 0.6))
    assert bool(result.success.all())


def test_deepfool_success_clear_of_boundary(lenet, fashion_test):
    inputs, labels = fashion_test.images[:64], fashion_test.labels[:64]
    result = DeepFool(steps=50)(lenet, inputs, labels)
    fooled = result.success & ~result.already_adversarial
    with torch.no_grad():
        logits = lenet(result.adversarial)
    label_logits = logits.gather(1, labels[:, None]).squeeze(1)
    lead = logits.scatter(1, labels[:, None], float("-inf")).amax(1) - label_logits
    assert int(fooled.sum()) > 50
    assert bool((lead[fooled] > 1e-4 * label_logits[fooled].abs().clamp_min(1.0)).all())
    # Each success must hold in another batch size, where the convolution rounds differently.
    with torch.no_grad():
        alone = torch.cat([lenet(image[None]).argmax(1) for image in result.adversarial])
    assert torch.equal(alone, result.predictions)


def test_jsma_rejects_eps(lenet, small_batch):
    inputs, labels = small_batch
    targets = (labels[:2] + 1) % 10
    with pytest.raises(ParameterError, match="does not take; drop eps and set gamma"):
        JSMA()(lenet, inputs[:2], labels[:2], targets, eps=0.5)


def test_double_inputs_to_float_model_explained(lenet, small_batch):
    inputs, labels = small_batch
    with pytest.raises(ParameterError, match=r"failed on torch.float64 inputs.*inputs.to\(torch.float32\)"):
        FGSM()(lenet, inputs[:2].double(), labels[:2], eps=0.1)
    with pytest.raises(ParameterError, match="failed on torch.float64 inputs"):
        DeepFool(steps=2)(lenet, inputs[:2].double(), labels[:2])
