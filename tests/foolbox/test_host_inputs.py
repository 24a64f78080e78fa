"""What Foolbox users hand Foolbox's own attacks (DDN, FMN) and ours must honour too: their own
criterion subclasses, epsilons as a tensor, inputs a rounding error outside the bounds."""

from __future__ import annotations

from typing import Any

import eagerpy as ep
import foolbox as fb
import pytest
import torch

from alma_plugin import alma
from alma_plugin.foolbox import L1ALMA, L2ALMA, LinfALMAProx

ATTACKS = [L2ALMA(steps=60), L1ALMA(steps=60), LinfALMAProx(steps=60)]
MARGIN = 2.0


class MarginMisclassification(fb.criteria.Misclassification):
    """Adversarial only when another class beats the label by ``MARGIN`` logits."""

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        logits, restore = ep.astensor_(outputs)
        label_logit = logits.raw.gather(1, self.labels.raw[:, None])[:, 0]
        others = logits.raw.scatter(1, self.labels.raw[:, None], float("-inf")).amax(1)
        return restore(ep.astensor(others - label_logit >= MARGIN))


class MarginTargeted(fb.criteria.TargetedMisclassification):
    """Adversarial only when the target beats every other class by ``MARGIN`` logits."""

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        logits, restore = ep.astensor_(outputs)
        target = self.target_classes.raw[:, None]
        others = logits.raw.scatter(1, target, float("-inf")).amax(1)
        return restore(ep.astensor(logits.raw.gather(1, target)[:, 0] - others >= MARGIN))


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: type(a).__name__)
def test_a_criterion_subclass_judges_success(attack: Any, fmodel: Any, few: Any) -> None:
    """The caller's own subclass of Misclassification decides success, in the attack and in
    Foolbox's final check (it used to be rebuilt as a plain Misclassification: every sample
    reported successful, none meeting the margin)."""
    x, y = few
    criterion = MarginMisclassification(y)
    _, clipped, success = attack(fmodel, x, criterion, epsilons=None)
    judged = criterion(clipped, fmodel(clipped))
    assert torch.equal(success, judged)
    # Met where an iterate overshoots the boundary by the margin (docs/foolbox.md, "Criteria");
    # the samples where none did come back unchanged.
    assert success.sum() >= len(y) // 2
    assert torch.equal(clipped[~success], x[~success])
    assert torch.equal(attack.run(fmodel, x, criterion), clipped)


@pytest.mark.parametrize("attack", [L2ALMA(steps=20), LinfALMAProx(steps=20)],
                         ids=lambda a: type(a).__name__)  # fmt: skip
def test_a_stricter_criterion_is_met_only_where_an_iterate_meets_it(attack: Any) -> None:
    """The solver stops at the decision boundary (DLR⁺ < 0), whatever the criterion: on a
    linear model, whose iterates do not overshoot it, no sample meets a margin of 1 at 20
    steps, and every one comes back unchanged with success False, where DDN (its ε follows
    the criterion) meets it for some (docs/foolbox.md, "Criteria")."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = fb.PyTorchModel(net, bounds=(0, 1))
    criterion = _Margin(net(x).argmax(1), 1.0)
    raw, clipped, success = attack(model, x, criterion, epsilons=None)
    assert not success.any() and torch.equal(raw, x) and torch.equal(clipped, x)
    _, _, ddn_success = fb.attacks.DDNAttack(steps=20)(model, x, criterion, epsilons=None)
    assert ddn_success.any()


class _Margin(fb.criteria.Misclassification):
    """Adversarial only when another class beats the label by more than ``margin`` logits."""

    def __init__(self, labels: Any, margin: float) -> None:
        super().__init__(labels)
        self.margin = margin

    def __call__(self, perturbed: Any, outputs: Any) -> Any:
        logits, restore = ep.astensor_(outputs)
        label_logit = logits.raw.gather(1, self.labels.raw[:, None])[:, 0]
        others = logits.raw.scatter(1, self.labels.raw[:, None], float("-inf")).amax(1)
        return restore(ep.astensor(others - label_logit > self.margin))


def test_a_targeted_criterion_subclass_judges_success(fmodel: Any, few: Any) -> None:
    x, y = few
    criterion = MarginTargeted((y + 1) % 10)
    _, clipped, success = L2ALMA(steps=60)(fmodel, x, criterion, epsilons=None)
    assert torch.equal(success, criterion(clipped, fmodel(clipped)))
    assert success.sum() >= len(y) // 2


@pytest.mark.parametrize("attack", [L2ALMA(steps=20), LinfALMAProx(steps=20)],
                         ids=lambda a: type(a).__name__)  # fmt: skip
def test_epsilons_as_a_tensor(attack: Any, fmodel: Any, few: Any) -> None:
    """Foolbox passes early_stop=min(epsilons): a 0-d tensor for a tensor of epsilons, which
    DDN accepts (it was a TypeError naming early_stop)."""
    x, y = few
    epsilons = torch.tensor([0.5, 1.0, 3.0])
    _, from_tensor, success = attack(fmodel, x, y, epsilons=epsilons)
    _, from_list, expected = attack(fmodel, x, y, epsilons=epsilons.tolist())
    assert all(torch.equal(a, b) for a, b in zip(from_tensor, from_list, strict=True))
    assert torch.equal(success, expected)


def test_inputs_a_rounding_error_outside_the_bounds_give_results_inside(
    mnist_cnn: torch.nn.Module, fmodel: Any, few: Any
) -> None:
    """Inputs up to 1e-6 of the range outside the bounds are accepted and clipped onto them:
    even a sample returned as it is (already misclassified) lies inside the bounds."""
    x, y = few
    wrong = (predict_labels(mnist_cnn, x) + 1) % 10  # every sample already "adversarial"
    outside = x.clone()
    outside[:, 0, 0, 0] = 1 + 5e-7
    outside[:, 0, 0, 1] = -5e-7
    for attack in ATTACKS:
        _, clipped, _ = attack(fmodel, outside, wrong, epsilons=None)
        raw = attack.run(fmodel, outside, wrong)
        for result in (clipped, raw):
            assert result.min() >= 0 and result.max() <= 1, type(attack).__name__
    for distance, order in (("l2", 2.0), ("linf", float("inf"))):
        result = alma(mnist_cnn, outside, wrong, distance=distance, steps=5)
        assert result.adversarials.min() >= 0 and result.adversarials.max() <= 1
        # returned as clipped: the distance is the clip's, measured from the caller's inputs
        clip = torch.linalg.vector_norm((result.adversarials - outside).flatten(1), order, dim=1)
        assert result.success.all() and (clip > 0).all() and (clip <= 1e-6).all()
        torch.testing.assert_close(result.distances, clip, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="within bounds"):
        alma(mnist_cnn, outside + 1e-3, y, steps=5)


def predict_labels(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)
