"""ALMA prox as a semantic-segmentation user calls it (thesis ch. 5): ignore labels under masks,
APSR ≥ ν re-evaluated on the returned tensors for several ν and targeted maps, the shapes and
outputs of segmentation models, memory layouts, cost and memory per step with masks.

Tiny per-pixel models built here; every run takes well under a second on one thread."""

from __future__ import annotations

import gc
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import alma_prox
from tests.utils import CountingModel

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = 4


class _Centre(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 20


def _segmenter(classes: int = CLASSES, seed: int = 0) -> nn.Module:
    """(x − ½)·20 → 3×3 conv with N(0, 1) weights: logits (N, K, H, W) whose pixel margins are
    small enough for ALMA prox to reach APSR 1 in a few dozen steps with λ⁽⁰⁾ = 10⁻²."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, classes, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.zero_()
    return nn.Sequential(_Centre(), conv).eval()


def _images(n: int = 3, h: int = 6, w: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.45 + 0.1 * torch.rand(n, 3, h, w, generator=g)


def _predict(model: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _apsr(model: Any, adv: torch.Tensor, goal: torch.Tensor, mask: torch.Tensor,
          targeted: bool) -> torch.Tensor:  # fmt: skip
    """Eq. 5.19 from the model's own predictions on the returned tensor."""
    pred = _predict(model, adv)
    hit = pred == goal if targeted else pred != goal
    return (hit & mask).flatten(1).sum(1).double() / mask.flatten(1).sum(1)


def _left_half_mask(labels: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[..., : labels.shape[-1] // 2] = True
    return mask


FAST = dict(steps=60, init_lr=1e-2)


# --- 1. ignore labels ------------------------------------------------------------------------


@pytest.mark.parametrize("ignore", [255, 21, -1])
def test_an_ignore_label_without_masks_is_an_error_naming_it(ignore: int) -> None:
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    labels[:, 0] = ignore
    match = str(ignore) if ignore >= 0 else r"\[-1, "
    with pytest.raises(ValueError, match=match):
        alma_prox(model, x, labels, steps=2)


def test_an_unmasked_ignore_label_error_says_how_to_ignore_pixels() -> None:
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    labels[:, 0] = 255
    with pytest.raises(ValueError, match=r"255.*masks=labels != 255"):
        alma_prox(model, x, labels, steps=2)


@pytest.mark.slow  # JAX's first eager call compiles its ops (~20 s here)
def test_jax_labels_beyond_int32_are_refused() -> None:
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    weights = jnp.asarray(rng.normal(size=(CLASSES, 3)).astype(np.float32))
    x = jnp.asarray(_images(2, 4, 6).numpy())
    labels = np.asarray(jnp.einsum("kc,nchw->nkhw", weights, x).argmax(1)).astype(np.int64)
    labels[0, 0, 0] += 2**32  # 2³² + c wrapped to int32 is the valid class c
    with pytest.raises(ValueError, match="labels"):
        alma_prox(lambda t: jnp.einsum("kc,nchw->nkhw", weights, t), x, labels, steps=2)


def test_values_under_the_mask_never_matter() -> None:
    """255 (VOC, Cityscapes), −1, 2⁴⁰ or a valid class outside ``masks``: the same attack, bit
    for bit, in int64 or uint8; nothing outside the mask is gathered or counted."""
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    mask = _left_half_mask(labels)
    runs = []
    for fill, dtype in ((0, torch.int64), (255, torch.int64), (255, torch.uint8),
                        (-1, torch.int64), (2**40, torch.int64), (3, torch.int64)):  # fmt: skip
        y = labels.masked_fill(~mask, fill).to(dtype)
        runs.append(alma_prox(model, x, y, masks=mask, adv_threshold=0.5, **FAST))
    first = runs[0]
    assert first.success.any()
    for other in runs[1:]:
        assert torch.equal(other.adversarials, first.adversarials)
        assert torch.equal(other.apsr, first.apsr) and torch.equal(other.success, first.success)


@pytest.mark.slow  # JAX compiles every eager op on its first call (~20 s here), not the attack
def test_jax_ignore_labels_are_refused_unmasked_and_ignored_masked() -> None:
    """JAX's gathers clamp out-of-range indices silently: 255 must be refused without masks and
    never reach a gather under them."""
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    weights = jnp.asarray(rng.normal(size=(CLASSES, 3)).astype(np.float32))

    def model(x: Any) -> Any:
        return jnp.einsum("kc,nchw->nkhw", weights, (x - 0.5) * 20)

    x = jnp.asarray(_images(2, 4, 6).numpy())
    labels = np.asarray(model(x).argmax(1))
    mask = np.ones(labels.shape, dtype=bool)
    mask[:, 0] = False
    with pytest.raises(ValueError, match="255"):
        alma_prox(model, x, jnp.asarray(np.where(mask, labels, 255)), steps=2)
    with pytest.raises(ValueError, match=str(CLASSES)):  # one past the last class: not clamped
        alma_prox(model, x, jnp.asarray(np.where(mask, labels, CLASSES)), steps=2)
    results = [
        alma_prox(model, x, jnp.asarray(np.where(mask, labels, fill)), masks=jnp.asarray(mask),
                  adv_threshold=0.5, steps=15, init_lr=1e-2)
        for fill in (0, 255)
    ]  # fmt: skip
    assert bool(results[0].success.any())
    np.testing.assert_array_equal(np.asarray(results[0].adversarials),
                                  np.asarray(results[1].adversarials))  # fmt: skip


# --- 3. APSR and ν ---------------------------------------------------------------------------


class _HalfFooled(nn.Module):
    """Two classes on 1×W images whose logits ignore the input: the first ``fooled`` pixels
    predict class 1, the others class 0, so with labels 0 the APSR is fooled / W whatever δ."""

    def __init__(self, width: int, fooled: int) -> None:
        super().__init__()
        self.z = torch.zeros(2, 1, width)
        self.z[1, 0, :fooled] = 5.0
        self.z[0, 0, fooled:] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0 * x[:, :1] + self.z


@pytest.mark.parametrize(
    "width, fooled, nu, success",
    [
        (2, 1, 0.5, True),
        (2, 1, 0.5 + 1e-10, False),  # before: a slack of 1e-9 counted it a success
        (10, 3, 0.3, True),
        (10, 3, 0.1 * 3, False),  # 0.30000000000000004: 3 / 10 = 0.3 is below it
        (10, 1, 0.1, True),  # 0.1 is 0.1000000000000000055 in binary, as 1 / 10 is
        (10, 1, 0.1 + 1e-12, False),
        (7, 7, 1.0, True),
        (7, 6, 1.0, False),
    ],
)
def test_success_is_apsr_at_least_nu_exactly(width: int, fooled: int, nu: float, success: bool):
    """Eq. 5.19's APSR ≥ ν, decided as Python compares fooled / ‖m‖₁ with ν in float64, with
    no slack (the reported APSR is a float32: 0.3 is 0.30000001 there)."""
    x = torch.full((1, 1, 1, width), 0.5)
    result = alma_prox(_HalfFooled(width, fooled), x, torch.zeros(1, 1, width, dtype=torch.long),
                       adv_threshold=nu, steps=2)  # fmt: skip
    assert result.apsr.item() == pytest.approx(fooled / width, rel=1e-7)
    assert bool(result.success.item()) is success is (fooled / width >= nu)


@pytest.mark.parametrize("nu", [0.5, 0.99, 1.0])
@pytest.mark.parametrize("goal", ["untargeted", "constant", "map", "masked"])
def test_reported_success_re_evaluates_on_the_returned_tensor(nu: float, goal: str) -> None:
    """Success ⇔ APSR ≥ ν on the masked pixels (eq. 5.19) of the returned adversarial, its APSR
    and ‖δ‖∞ as reported; failures return the input at +inf."""
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    targeted = goal in ("constant", "map")
    mask = torch.ones_like(labels, dtype=torch.bool)
    target = labels
    if goal == "constant":
        target = torch.zeros_like(labels)  # erase every object: some pixels already class 0
    elif goal == "map":
        target = (labels + 1) % CLASSES
    elif goal == "masked":
        mask = _left_half_mask(labels)
        target = labels.masked_fill(~mask, 255)
    result = alma_prox(model, x, target, masks=None if goal != "masked" else mask,
                       targeted=targeted, adv_threshold=nu, **FAST)  # fmt: skip
    measured = _apsr(model, result.adversarials, target, mask, targeted)
    assert result.success.any()  # a test that can fail: this setting reaches every ν
    assert torch.equal(result.success, measured >= nu)
    torch.testing.assert_close(result.apsr.double(), measured)
    linf = (result.adversarials - x).flatten(1).abs().max(1).values
    torch.testing.assert_close(result.distances[result.success], linf[result.success])
    failed = ~result.success
    assert torch.equal(result.adversarials[failed], x[failed])
    assert torch.isinf(result.distances[failed]).all()
    assert (result.first_success_step[result.success] >= 0).all()
    assert (result.first_success_step[failed] == -1).all()
    assert result.adversarials.min() >= 0 and result.adversarials.max() <= 1


def test_targets_already_met_succeed_at_distance_zero() -> None:
    """Targets equal to the prediction on ≥ ν of the pixels: success at step 0 with x itself."""
    model, x = _segmenter(), _images()
    target = _predict(model, x)
    result = alma_prox(model, x, target, targeted=True, steps=3)
    assert result.success.all() and (result.distances == 0).all()
    assert torch.equal(result.adversarials, x) and (result.first_success_step == 0).all()


# --- 4. shapes and model outputs -------------------------------------------------------------


def test_one_image_two_classes_non_square() -> None:
    """N = 1, K = 2 (DLR⁺ falls back to the logit difference), H ≠ W."""
    model, x = _segmenter(classes=2), _images(1, 5, 11)
    labels = _predict(model, x)
    result = alma_prox(model, x, labels, adv_threshold=0.99, **FAST)
    measured = _apsr(model, result.adversarials, labels, torch.ones_like(labels, dtype=torch.bool),
                     targeted=False)  # fmt: skip
    assert result.success.all() and (measured >= 0.99).all()


@pytest.mark.parametrize(
    "wrap, error, match",
    [
        (lambda out: {"out": out}, TypeError, "got dict"),  # torchvision's segmentation models
        (lambda out: (out, out), TypeError, "got tuple"),
        (lambda out: out[..., ::2, ::2], ValueError, r"\(N, K, 6, 10\), got shape \(2, 4, 3, 5\)"),
        (lambda out: out.permute(0, 2, 3, 1), ValueError, r"got shape \(2, 6, 10, 4\)"),
    ],
)
def test_segmentation_model_outputs_that_are_not_logit_maps(wrap, error, match) -> None:
    model, x = _segmenter(), _images(2)
    labels = _predict(model, x)
    with pytest.raises(error, match=match):
        alma_prox(lambda t: wrap(model(t)), x, labels, steps=2)


def test_dense_labels_refuse_a_success_predicate_and_class_restarts() -> None:
    model, x = _segmenter(), _images(2)
    labels = _predict(model, x)
    with pytest.raises(ValueError, match="is_adversarial applies to"):
        alma_prox(model, x, labels, steps=2, is_adversarial=lambda a, z: z.sum((1, 2, 3)) > 0)
    with pytest.raises(ValueError, match="restart_mode='classes'"):
        alma_prox(model, x, labels, steps=4, restarts=2, restart_mode="classes")


def test_label_maps_for_volumes_get_an_error_that_says_why() -> None:
    """Label maps for (N, C, D, H, W) volumes or (N, C, L) signals: whatever the support, the
    error must not name the labels' own shape as the expected one."""
    for net, x in ((nn.Conv3d(1, 3, 3, padding=1), torch.rand(2, 1, 4, 5, 6)),
                   (nn.Conv1d(2, 3, 3, padding=1), torch.rand(2, 2, 7))):  # fmt: skip
        labels = _predict(net.eval(), x)
        with pytest.raises(ValueError, match="volumes or 1-D signals are not supported") as error:
            alma_prox(net, x, labels, steps=2)
        assert "(N, H, W) label maps need (N, C, H, W) inputs" in str(error.value)
        assert f"got labels of shape {tuple(labels.shape)} for {x.ndim}-D inputs" in str(
            error.value
        )


# --- 5. layouts, restarts, early stop, callbacks, 16-bit ------------------------------------


def test_channels_last_and_strided_inputs_labels_and_masks() -> None:
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    mask = _left_half_mask(labels)
    y = labels.masked_fill(~mask, 255)
    options = dict(masks=mask, adv_threshold=0.99, **FAST)
    reference = alma_prox(model, x, y, **options)
    assert reference.success.any()
    # a strided view of a larger tensor, and labels / masks transposed twice: the same bits
    wide = torch.zeros(*x.shape[:3], 2 * x.shape[3])
    wide[..., ::2] = x
    y_t, m_t = y.transpose(1, 2).contiguous().transpose(1, 2), mask.transpose(1, 2).contiguous()
    result = alma_prox(model, wide[..., ::2], y_t, **{**options, "masks": m_t.transpose(1, 2)})
    assert torch.equal(result.adversarials, reference.adversarials)
    # channels_last: another convolution kernel (rounding differences grow along the run): an
    # attack as good, whose successes re-evaluate
    last = alma_prox(model, x.contiguous(memory_format=torch.channels_last), y, **options)
    assert last.adversarials.shape == x.shape and last.success.sum() >= reference.success.sum()
    torch.testing.assert_close(last.distances, reference.distances, atol=0, rtol=0.05)
    measured = _apsr(model, last.adversarials, y, mask, targeted=False)
    assert torch.equal(last.success, measured >= 0.99)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_models_with_masks_re_evaluate(dtype: torch.dtype) -> None:
    model, x = _segmenter().to(dtype), _images().to(dtype)
    labels = _predict(model, x)
    mask = _left_half_mask(labels)
    y = labels.masked_fill(~mask, 255).to(torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = alma_prox(model, x, y, masks=mask, adv_threshold=0.9, **FAST)
    assert result.adversarials.dtype == dtype and result.success.any()
    measured = _apsr(model, result.adversarials, labels, mask, targeted=False)
    assert (measured[result.success] >= 0.9).all()
    linf = (result.adversarials.float() - x.float()).flatten(1).abs().max(1).values
    torch.testing.assert_close(result.distances[result.success], linf[result.success])


def test_one_forward_one_backward_per_step_with_masks_restarts_and_early_stop() -> None:
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    mask = _left_half_mask(labels)
    y = labels.masked_fill(~mask, 255)
    for options in (dict(restarts=3), dict(early_stop=1.0, adv_threshold=0.5),
                    dict(restarts=2, early_stop=1.0, adv_threshold=0.5)):  # fmt: skip
        counting = CountingModel(model)
        result = alma_prox(counting, x, y, masks=mask, steps=40, init_lr=1e-2, **options)
        assert counting.forwards == counting.backwards == result.steps_run
        if "early_stop" in options:  # every sample solved below 1.0: the run ends early
            assert result.success.all() and result.steps_run < 40


def test_callback_sees_per_pixel_tensors_and_the_apsr_decision() -> None:
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    mask = _left_half_mask(labels)
    y = labels.masked_fill(~mask, 255)
    seen: list[Any] = []
    result = alma_prox(model, x, y, masks=mask, adv_threshold=0.5, callback=seen.append, **FAST)
    assert len(seen) == 60 and [info.step for info in seen] == list(range(60))
    m = x.shape[2] * x.shape[3]
    for info in seen:
        assert info.distance.shape == (3,) and info.success.shape == (3,)
        assert info.constraint.shape == info.mu.shape == info.rho.shape == (3, m)
        # success is APSR ≥ ν counted on the masked pixels' d < 0
        fooled = ((info.constraint < 0) & mask.flatten(1)).sum(1) / mask.flatten(1).sum(1)
        assert torch.equal(info.success, fooled >= 0.5)
    assert torch.equal(torch.stack([i.success for i in seen]).any(0), result.success)


def test_callback_reports_no_constraint_outside_the_masks() -> None:
    model, x = _segmenter(), _images()
    labels = _predict(model, x)
    mask = _left_half_mask(labels)
    seen: list[Any] = []
    alma_prox(model, x, labels.masked_fill(~mask, 255), masks=mask, steps=2, callback=seen.append)
    outside = ~mask.flatten(1)
    assert torch.isnan(seen[-1].constraint[outside]).all()
    assert torch.isfinite(seen[-1].constraint[~outside]).all()


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated aliases
        warnings.simplefilter("ignore")
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def test_memory_does_not_grow_with_the_steps_with_masks() -> None:
    """Live tensors at the 12th and the 100th forward of one masked, masking-on run."""
    model, x = _segmenter(), _images(2)
    labels = _predict(model, x)
    mask = _left_half_mask(labels)
    counts: dict[int, int] = {}
    calls = [0]

    def probed(t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] in (12, 100):
            counts[calls[0]] = _live_tensors()
        return model(t)

    alma_prox(probed, x, labels.masked_fill(~mask, 255), masks=mask, steps=100)
    assert counts[100] <= counts[12] + 3, counts
