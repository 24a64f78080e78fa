"""Bad input gets a clear error naming the argument and the value; an empty batch is fine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from alma_plugin import ALMAParams, ProxParams, alma, alma_prox, budget_alpha, lagrangian


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()


X = torch.rand(3, 1, 4, 4)
Y = torch.tensor([0, 1, 2])


@pytest.mark.parametrize(
    "inputs, labels, kwargs, error, match",
    [
        (X + 1.5, Y, {}, ValueError, r"inputs must lie within bounds \(0.0, 1.0\), got values"),
        (X * 300, Y, {"bounds": (0, 255)}, ValueError, "within bounds"),
        (torch.where(X > 0.5, torch.nan, X), Y, {}, ValueError, "NaN or Inf"),
        (torch.where(X > 0.5, torch.inf, X), Y, {}, ValueError, "NaN or Inf"),
        (
            torch.where(torch.arange(3)[:, None, None, None] == 1, torch.nan, X),
            Y,
            {},
            ValueError,
            r"NaN or Inf values, in 1 of 3 samples \(indices 1\)",
        ),
        (X.long(), Y, {}, TypeError, "inputs must be a floating-point tensor"),
        (X[0, 0, 0], Y, {}, ValueError, r"inputs must have shape|must lie|shape \(N, \.\.\.\)"),
        (
            X,
            Y[:2],
            {},
            ValueError,
            r"labels must have shape \(3,\), one class per input .*got shape \(2,\)$",
        ),
        (X, Y[:, None], {}, ValueError, r"labels must have shape \(3,\)"),
        # one unbatched (1, 4, 4) image read as 1 image of 4 rows: the hint names the batch axis
        (X[0], Y[0], {}, ValueError, r"\(1,\).*got shape \(\).*add its batch axis: inputs\[None\]"),
        (X, Y.float(), {}, TypeError, "labels must be an integer tensor, got dtype"),
        (X, torch.tensor([0, 1, 5]), {}, ValueError, r"labels must lie in \[0, 5\).*\[0, 5\]"),
        (X, torch.tensor([0, -1, 2]), {}, ValueError, r"labels must lie in \[0, 5\)"),
        (X, Y, {"targeted": True, "steps": 1}, None, None),
        (X, torch.tensor([0, 1, 9]), {"targeted": True}, ValueError, r"targets must lie in"),
        (
            X,
            torch.tensor([0, 1, 9]),
            {"targeted": True, "distance": "linf"},
            ValueError,
            r"targets must lie in",
        ),
        (
            X,
            torch.tensor([0, -1, 2]),
            {"targeted": True, "distance": "linf"},
            ValueError,
            r"targets must lie in \[0, K\), K the model.s class count, got values in \[-1, 2\]",
        ),
        (X, Y, {"steps": 0}, ValueError, "steps must be >= 1, got 0"),
        (X, Y, {"steps": 2.5}, TypeError, "steps must be an integer, got 2.5"),
        (X, Y, {"distance": "l3"}, ValueError, r"distance must be one of .*got 'l3'"),
        (X, Y, {"penalty": "P9"}, ValueError, r"penalty must be one of .*got 'P9'"),
        # a non-string is the wrong type (before: ValueError, as a wrong name)
        (X, Y, {"distance": 2}, TypeError, r"distance must be one of .*got 2 \(int\)"),
        (X, Y, {"penalty": 2}, TypeError, r"penalty must be one of .*got 2 \(int\)"),
        (X, Y, {"schedule": 2}, TypeError, r"schedule must be one of .*got 2 \(int\)"),
        (X, Y, {"restart_mode": 3}, TypeError, r"restart_mode must be one of .*got 3 \(int\)"),
        (
            X,
            Y,
            {"first_run_share": 1.0},
            ValueError,
            r"first_run_share must lie in \(0, 1\), got 1",
        ),
        (X, Y, {"first_run_share": 0}, ValueError, r"first_run_share must lie in \(0, 1\), got 0"),
        (X, Y, {"first_run_share": float("nan")}, ValueError, r"first_run_share must lie in"),
        (X, Y, {"first_run_share": True}, TypeError, r"first_run_share must be a number"),
        (X, Y, {"alpha": 1.5}, ValueError, r"alpha must lie in \[0, 1\), got 1.5"),
        (X, Y, {"gamma": 0.5}, ValueError, "gamma must lie in"),
        (X, Y, {"bounds": (1, 0)}, ValueError, "bounds must be finite with lower < upper"),
        (X, Y, {"bounds": 1.0}, TypeError, "bounds must be a pair"),
        (X, Y, {"bounds": "01"}, TypeError, "bounds must be a pair"),  # was read as (0, 1)
        (X, Y, {"bounds": {0: 1, 1: 2}}, TypeError, "bounds must be a pair"),  # was its keys
        (X, Y, {"bounds": (True, 2)}, TypeError, "bounds must be a pair"),  # was (1.0, 2.0)
        (X, Y, {"bounds": ("0", "1")}, TypeError, "bounds must be a pair"),  # was (0.0, 1.0)
        # before: success False and distance inf everywhere (the range is inf in float32)
        (X, Y, {"bounds": (0, 1e39)}, ValueError, r"bounds must be finite in the inputs' dtype"),
        (X.double(), Y, {"bounds": (-1e308, 1e308)}, ValueError, r"and so must their range"),
        (X, Y, {"targeted": "False"}, TypeError, "targeted must be a bool, got 'False'"),
        (X, Y, {"targeted": 1}, TypeError, "targeted must be a bool"),
        (X, Y, {"targeted": np.bool_(False), "steps": 1}, None, None),
        (X, Y, {"init_lr_distance": -1.0}, ValueError, "init_lr_distance must lie in"),
        (X, Y, {"levels": 1}, ValueError, "levels must be >= 2"),
        (X, Y, {"early_stop": -1.0}, ValueError, "early_stop must be None or a number >= 0"),
        (X, Y, {"early_stop": 0.0, "steps": 2}, None, None),  # Foolbox's epsilons start at 0
        (X, Y, {"steps": 100.0}, TypeError, r"steps must be an integer, got 100.0"),
        (X, Y, {"steps": np.int64(2)}, None, None),
        (X, Y, {"steps": 2, "check_steps": np.int32(5), "gamma": np.float32(1.5)}, None, None),
        (X, Y, {"steps": True}, TypeError, "steps must be an integer"),
        (X, Y, {"seed": 1.0}, TypeError, "seed must be an integer"),
        (X, Y.to(torch.bool), {}, TypeError, "labels must be an integer tensor, got dtype"),
        (X, Y.numpy().astype(np.float32), {}, TypeError, "labels must hold integer"),
        (X, Y, {"is_adversarial": 3}, TypeError, "is_adversarial must be callable"),
        (X, Y, {"callback": "print"}, TypeError, "callback must be callable"),
        (X, Y, {"mu_init": 2.0, "mu_max": 1.0}, ValueError, "mu_init must lie in"),
        # before: "mu_init must lie in [2e+12, 1e+12], got 1.0", naming the field left alone
        (X, Y, {"mu_min": 2e12}, ValueError, r"mu_max must lie in \[2e\+12, inf\)"),
        # before: torch's "value cannot be converted to type float without overflow"
        (X, Y, {"mu_max": 1e39}, ValueError, r"mu_max must be finite in torch.float32, the dtype"),
        (X.numpy(), Y, {}, TypeError, "inputs must be a PyTorch, JAX or TensorFlow tensor"),
        # before: NumPy's "setting an array element with a sequence", naming no argument
        (X, [[0, 1], [0], [1]], {}, TypeError, "labels must be a rectangular nested list"),
        # before: torch's "min(): Expected reduction dim to be specified for input.numel() == 0"
        (
            X[:, :, :0],
            Y,
            {},
            ValueError,
            r"at least one value per sample, got shape \(3, 1, 0, 4\)",
        ),
    ],
)
def test_bad_arguments(
    model: nn.Module, inputs, labels, kwargs: dict, error: type | None, match: str | None
) -> None:
    if error is None:
        alma(model, inputs, labels, **kwargs)
        return
    with pytest.raises(error, match=match):
        alma(model, inputs, labels, **kwargs)


def test_unknown_hyperparameter(model: nn.Module) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'rhoo'"):
        alma(model, X, Y, rhoo=2.0)


@pytest.mark.parametrize(
    "head, match",
    [
        (lambda out: out[:, :1], r"model outputs must have shape \(N=3, K>=2\).*\(3, 1\)"),
        (lambda out: out.reshape(-1), r"model outputs must have shape.*\(15,\)"),
        (lambda out: out[:2], r"model outputs must have shape.*\(2, 5\)"),
        (lambda out: (out,), "model must return a Tensor of logits .like its inputs., got tuple"),
    ],
)
def test_bad_model_outputs(model: nn.Module, head, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        alma(lambda x: head(model(x)), X, Y, steps=2)


def test_not_callable_model() -> None:
    with pytest.raises(TypeError, match="model must be callable, got int"):
        alma(3, X, Y)  # type: ignore[arg-type]


def test_empty_batch_returns_empty_results(model: nn.Module) -> None:
    result = alma(model, X[:0], Y[:0], steps=5)
    assert result.adversarials.shape == (0, 1, 4, 4)
    assert result.distances.shape == result.success.shape == (0,)
    assert result.steps_run == 0


@pytest.mark.parametrize(
    "labels",
    [Y.to(dtype) for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)]
    + [Y.numpy(), Y.numpy().astype(np.uint8), Y.tolist(), tuple(Y.tolist())],
    ids=lambda v: getattr(v, "dtype", type(v).__name__).__str__(),
)
def test_any_integer_label_dtype_or_container(model: nn.Module, labels) -> None:
    """uint8/int16/... labels crashed inside the gather; NumPy arrays and lists were refused."""
    reference = alma(model, X, Y, steps=10)
    result = alma(model, X, labels, steps=10)
    assert torch.equal(result.adversarials, reference.adversarials)
    assert torch.equal(result.success, reference.success)


@pytest.mark.parametrize(
    "head, match",
    [
        (lambda out: out[:, :1], "shape"),  # K = 1
        (lambda out: out.argmax(1, keepdim=True), "floating-point logits, got dtype torch.int64"),
        (lambda out: out.detach(), "differentiable"),
        (lambda out: out.detach().numpy(), "model must return a Tensor of logits"),
        (lambda out: out.tolist(), "model must return a Tensor of logits"),
        (lambda out: torch.nn.functional.one_hot(out.argmax(1), 5).float(), "differentiable"),
    ],
    ids=["K=1", "argmax", "detached", "numpy", "list", "one-hot argmax"],
)
def test_models_that_cannot_be_attacked_get_a_clear_error(model: nn.Module, head, match) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        alma(lambda x: head(model(x)), X, Y, steps=3)


@pytest.mark.parametrize(
    "answer, error",
    [
        (lambda l: l.argmax(1), TypeError),  # a class, not a decision (before: ValueError)
        (lambda l: l[:, 0], TypeError),  # a score
        (lambda l: l[:, 0] > 0, ValueError),  # cut to 2 samples below
        (lambda l: l > 0, ValueError),
    ],
)
def test_success_predicate_of_wrong_dtype_or_shape(model: nn.Module, answer, error) -> None:
    def predicate(inputs, logits):
        out = answer(logits)
        return out[:2] if out.dtype == torch.bool and out.ndim == 1 else out

    with pytest.raises(error, match=r"is_adversarial must return a boolean tensor of shape"):
        alma(model, X, Y, steps=3, is_adversarial=predicate)


def test_the_success_predicate_gets_the_callers_kind_of_tensor(model: nn.Module) -> None:
    """Like ``callback``: torch tensors for torch inputs, so torch code (``dim=``) works."""
    seen = []

    def predicate(inputs, logits):
        seen.append((type(inputs), type(logits)))
        return logits.argmax(dim=1) != Y

    result = alma(model, X, Y, steps=5, is_adversarial=predicate)
    assert set(seen) == {(torch.Tensor, torch.Tensor)}
    assert isinstance(result.distances, torch.Tensor)
    prox = alma(model, X, Y, distance="linf", steps=5, is_adversarial=predicate)
    assert isinstance(prox.distances, torch.Tensor) and len(seen) == 10


def test_lpips_inputs_and_outputs_are_checked_before_any_model_call() -> None:
    calls = []

    def counting(x):
        calls.append(1)
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)[:, :2]

    with pytest.raises(ValueError, match=r"distance='lpips' needs .*H, W >= 31.*\(2, 3, 30, 30\)"):
        alma(counting, torch.rand(2, 3, 30, 30), torch.tensor([0, 1]), distance="lpips")
    assert not calls

    def scalar_lpips(x_adv, x):
        return (x_adv - x).abs().sum()

    with pytest.raises(
        ValueError, match=r"lpips must return one distance per sample, shape \(2,\)"
    ):
        alma(counting, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), distance="lpips",
             lpips=scalar_lpips, steps=2)  # fmt: skip


def _scalar_lpips(x_adv, x):  # one number for the batch, not one per sample
    return (x_adv - x).abs().sum()


def _lpips_alma(model, x, y):
    return alma(model, x, y, distance="lpips", lpips=_scalar_lpips, steps=2)


def _lpips_torchattacks(model, x, y):
    from alma_plugin.torchattacks import ALMA

    return ALMA(model, "lpips", steps=2, lpips=_scalar_lpips)(x, y)


def _lpips_foolbox(model, x, y):
    import foolbox as fb

    from alma_plugin.foolbox import LPIPSALMA

    return LPIPSALMA(steps=2, lpips=_scalar_lpips)(fb.PyTorchModel(model, (0, 1)), x, y,
                                                  epsilons=None)  # fmt: skip


@pytest.mark.parametrize("attack", [_lpips_alma, _lpips_torchattacks, _lpips_foolbox])
def test_a_custom_lpips_is_checked_by_every_entry_point(attack) -> None:
    """Before: Foolbox's LPIPSALMA stored the callable as given, and a scalar answer failed
    with an IndexError from deep in the solver."""
    pytest.importorskip("foolbox")
    pytest.importorskip("torchattacks")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).eval()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"lpips must return one distance per sample, shape"):
        attack(model, x, torch.tensor([0, 1]))


def test_an_empty_float16_batch_has_the_dtypes_of_a_non_empty_one(model: nn.Module) -> None:
    half = model.half()
    empty = alma(half, X[:0].half(), Y[:0], steps=2)
    full = alma(half, X.half(), Y, steps=2)
    assert empty.distances.dtype == full.distances.dtype == torch.float32
    assert empty.adversarials.dtype == full.adversarials.dtype == torch.float16


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_a_model_that_writes_into_its_input_is_refused(model: nn.Module, bounds) -> None:
    """ALMA returns the tensor the model judged: a model that changes it in place would make
    the reported distances and successes wrong (with bounds (0, 1) autograd refused it with an
    obscure leaf error)."""

    class Normalising(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model(x.sub_(0.5).mul_(2))

    for writer in (nn.Sequential(nn.ReLU(inplace=True), model), Normalising()):
        with pytest.raises(ValueError, match="model wrote into its input tensor in place"):
            alma(writer, X, Y, steps=3, bounds=bounds)


def test_float64_logits_of_a_float32_batch(model: nn.Module) -> None:
    """The logits are cast to the solver's dtype: float64 ones used to promote the iterate,
    and the model's second call failed on float64 inputs."""
    for distance in ("l2", "l1", "linf"):
        result = alma(lambda x: model(x).double(), X, Y, distance=distance, steps=10)
        assert result.adversarials.dtype == result.distances.dtype == torch.float32


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
@pytest.mark.parametrize("criterion", [False, True])
def test_float64_logits_are_judged_in_float64(distance: str, criterion: bool) -> None:
    """Success is decided on the model's own float64 logits, not on their float32 rounding:
    at a common offset of 1e5, float32 merges logits 1e-3 apart into a tie that ``argmax``
    resolves to the first class. With a criterion (Foolbox's path) the solver used to keep
    such a tie as adversarial: a reported success the model, re-evaluated, did not confirm
    (and, through Foolbox, a sample lost)."""
    torch.manual_seed(0)
    weights = torch.randn(10, 64, dtype=torch.float64)

    def model(x: torch.Tensor) -> torch.Tensor:
        return 1e5 + x.double().flatten(1) @ weights.T

    x = torch.rand(16, 1, 8, 8)
    labels = model(x).argmax(1)
    seen: list[torch.dtype] = []

    def misclassified(inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        seen.append(logits.dtype)
        return logits.argmax(1) != labels

    result = alma(model, x, labels, distance=distance, steps=100,
                  is_adversarial=misclassified if criterion else None)  # fmt: skip
    with torch.no_grad():
        fooled = model(result.adversarials).argmax(1) != labels
    assert result.success.all()
    assert fooled.all()
    assert result.adversarials.dtype == result.distances.dtype == torch.float32
    assert set(seen) == ({torch.float64} if criterion else set())


def test_masks_with_class_labels_are_refused(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"masks select pixels of \(N, H, W\) label maps"):
        alma_prox(model, X, Y, masks=torch.ones(3, dtype=torch.bool), steps=2)


@pytest.mark.parametrize("entry", ["alma-l2", "alma-linf", "alma_prox-seg", "lagrangian"])
def test_called_under_inference_mode_as_under_no_grad(entry: str) -> None:
    """An evaluation loop under ``torch.inference_mode()``: the call works and gives the result
    it gives under ``torch.no_grad()`` (before: PyTorch's "Inference tensors do not track
    version counter", or a ValueError blaming the model)."""
    from alma_plugin import alma, alma_prox, lagrangian

    torch.manual_seed(0)
    dense = entry == "alma_prox-seg"
    net = (nn.Conv2d(1, 3, 1) if dense else nn.Sequential(nn.Flatten(), nn.Linear(16, 3))).eval()
    x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        labels = net(x).argmax(1)
    attacks = {
        "alma-l2": lambda: alma(net, x, labels, steps=5).adversarials,
        "alma-linf": lambda: alma(net, x, labels, distance="linf", steps=5).adversarials,
        "alma_prox-seg": lambda: alma_prox(net, x, labels, steps=5).adversarials,
        "lagrangian": lambda: lagrangian(net, x, labels, steps=5, seed=0).perturbed,
    }
    with torch.no_grad():
        expected = attacks[entry]()
    with torch.inference_mode():
        result = attacks[entry]()
    assert torch.equal(result, expected)


class _Offset(nn.Module):
    """Logits that ignore the input: a parameter per class."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(inputs), -1)


@pytest.mark.parametrize("entry", ["alma-l2", "alma-linf", "lagrangian"])
def test_models_that_ignore_their_input_get_a_zero_gradient(entry: str) -> None:
    """Before: PyTorch's raw "One of the differentiated Tensors appears to not have been used
    in the graph" from ALMA prox and lagrangian. The gradient is 0, as in JAX: a sample the
    constant logits already misclassify is a success at distance 0, the others fail."""
    from alma_plugin import lagrangian

    model, x = _Offset([0.0, 2.0, 1.0]), torch.rand(2, 1, 4, 4)
    labels = torch.tensor([0, 1])  # the model says 1: sample 0 is already misclassified
    if entry == "lagrangian":
        result = lagrangian(model, x, labels, steps=3, seed=0)
        assert result.perturbed.shape == x.shape
        return
    result = alma(model, x, labels, distance=entry.split("-")[1], steps=5)
    assert result.success.tolist() == [True, False]
    assert result.distances[0] == 0 and torch.equal(result.adversarials[0], x[0])


@pytest.mark.parametrize("entry", ["alma", "alma_prox", "lagrangian"])
def test_integer_logits_and_models_writing_into_their_input_are_named(entry: str) -> None:
    from alma_plugin import lagrangian

    attack = {
        "alma": lambda m, x, y: alma(m, x, y, steps=2),
        "alma_prox": lambda m, x, y: alma_prox(m, x, y, steps=2),
        "lagrangian": lambda m, x, y: lagrangian(m, x, y, steps=2),
    }[entry]
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="floating-point logits, got dtype torch.int64"):
        attack(lambda inputs: net(inputs).round().long(), x, y)
    if entry != "alma_prox":  # ALMA prox gives the model x + δ, a tensor of its own
        writes = nn.Sequential(nn.ReLU(inplace=True), net).eval()
        with pytest.raises(ValueError, match="model wrote into its input tensor in place"):
            attack(writes, x, y)


@pytest.mark.parametrize("name", ["linf", "L_inf", "inf", "LINF"])
def test_linf_names_are_those_of_torchattacks(model: nn.Module, name: str) -> None:
    """alma() takes every ℓ∞ spelling torchattacks' ALMA takes (it refused "inf", "l_inf")."""
    from alma_plugin.torchattacks import ALMA

    expected = alma(model, X, Y, distance="linf", steps=3).adversarials
    assert torch.equal(alma(model, X, Y, distance=name, steps=3).adversarials, expected)
    assert torch.equal(ALMA(model, name, steps=3)(X, Y), expected)


def test_unknown_distance_lists_linf(model: nn.Module) -> None:
    """The error for an unknown distance lists every name the entry point takes, "linf" too."""
    from alma_plugin.torchattacks import ALMA, MinimalEnsemble

    match = r"distance must be one of \[.*'ssim', 'linf'\], got 'l3'"
    with pytest.raises(ValueError, match=match):
        alma(model, X, Y, distance="l3")
    with pytest.raises(ValueError, match=match):
        ALMA(model, "l3")
    with pytest.raises(ValueError, match=match):
        MinimalEnsemble([ALMA(model)], distance="l3")


def test_misspelt_keyword_names_the_class_called() -> None:
    """A typo gets a TypeError naming the class the user wrote (not ALMAAttack / _SSIMFamily,
    the base classes whose __init__ holds the arguments) and the closest keyword."""
    pytest.importorskip("foolbox")
    from alma_plugin.foolbox import L1ALMA, L2ALMA, SSIMALMA, LinfALMAProx
    from alma_plugin.torchattacks import ALMA, Lagrangian

    for cls in (L1ALMA, L2ALMA, SSIMALMA, LinfALMAProx):
        with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) got an unexpected keyword "
                           r"argument 'step' \(did you mean 'steps'\?\)$"):  # fmt: skip
            cls(step=10)
    model = nn.Linear(2, 2)
    for cls in (ALMA, Lagrangian):
        with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) got an unexpected keyword"):
            cls(model, step=10)
    with pytest.raises(TypeError, match=r"^alma\(\) got an unexpected keyword argument 'rhoo'"):
        alma(model, X, Y, rhoo=2.0)
    with pytest.raises(TypeError, match=r"^L2ALMA\(\) takes 0 positional argument\(s\) but 1"):
        L2ALMA(10)  # type: ignore[misc]


def test_yes_no_arguments_take_numpy_bools(model: nn.Module) -> None:
    """Every yes/no argument takes what ``targeted`` takes (a NumPy bool from a config array)."""
    from alma_plugin import ProxParams

    alma(model, X, Y, steps=1, cuda_graphs=np.False_)
    assert ProxParams(constraint_masking=np.True_).constraint_masking is True
    alma_prox(model, X, Y, steps=1, mask_decay=np.False_)
    with pytest.raises(TypeError, match="mask_decay must be a bool, got 1"):
        ProxParams(mask_decay=1)


@pytest.mark.parametrize(
    "make, error, match",
    [
        # before: accepted, and ρ's first growth, (γρ).minimum(ρ_max), lowered it to ρ_max
        (lambda: ProxParams(rho_init=1e16), ValueError, r"rho_init must lie in \(0, 1e\+15\]"),
        (lambda: ALMAParams(rho_init=2.0, rho_max=1.0), ValueError, r"rho_init must lie in"),
        (
            lambda: ProxParams(rho_max=0.5).for_task("classification"),
            ValueError,
            r"rho_max must be >= rho_init, which is 1.0 for classification",
        ),
        # before: a bare KeyError: 'classifcation'
        (lambda: ProxParams().for_task("classifcation"), ValueError, "task must be one of"),
        # before: nan for NaN, 0.5 for 0, −5 and True, a bare TypeError for "100"
        (lambda: budget_alpha(float("nan")), TypeError, "steps must be an integer"),
        (lambda: budget_alpha(0), ValueError, "steps must be >= 1, got 0"),
        (lambda: budget_alpha(True), TypeError, "steps must be an integer"),
        (lambda: budget_alpha("100"), TypeError, "steps must be an integer"),
        (lambda: ProxParams(constraint_masking=None), TypeError, "must be a bool, got None"),
    ],
)
def test_params_refuse_inconsistent_values(make, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_rho_max_below_the_task_default_is_fine_with_an_explicit_rho_init() -> None:
    assert ProxParams(rho_max=0.5).for_task("segmentation").rho_init == 0.01
    assert ProxParams(rho_max=0.5, rho_init=0.5).for_task("classification").rho_init == 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_bound_as_the_inputs_dtype_rounds_it_is_inside(dtype: torch.dtype) -> None:
    """A white pixel normalised with ImageNet's red statistics is the upper bound, 2.2489, and
    2.25 in bfloat16: 1.1e-3 above it, beyond the 1e-6 of the range allowed for rounding, so
    every bfloat16 image with a white pixel was refused ("inputs must lie within bounds").
    The bound as the dtype rounds it is accepted, and the results stay inside the bounds."""
    from alma_plugin.foolbox.distances import NormalisedDistance

    bounds = (-0.485 / 0.229, (1 - 0.485) / 0.229)
    torch.manual_seed(0)
    u = torch.rand(4, 3, 12, 12)
    u[:, :, 0, 0] = 1.0  # a white pixel
    inputs = (bounds[0] + u * (bounds[1] - bounds[0])).to(dtype)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 3)).to(dtype).eval()
    labels = net(inputs).argmax(1)
    result = alma(net, inputs, labels, steps=5, bounds=bounds)
    assert result.adversarials.dtype == dtype
    assert bounds[0] <= result.adversarials.min() and result.adversarials.max() <= bounds[1]
    distance = NormalisedDistance("ssim", bounds=bounds)
    assert distance(inputs, inputs).tolist() == [0.0] * 4
    beyond = inputs.clone()
    beyond[:, :, 0, 0] = torch.tensor(bounds[1] + 0.01, dtype=dtype)
    with pytest.raises(ValueError, match="inputs must lie within bounds"):
        alma(net, beyond, labels, steps=5, bounds=bounds)


@pytest.mark.parametrize(
    "attack",
    [
        lambda m, x: alma_prox(m, x, Y, steps=2, rho_max=1e300),
        lambda m, x: lagrangian(m, x, Y, steps=2, multiplier=1e39),
    ],
)
def test_hyperparameters_beyond_float32_are_named(model: nn.Module, attack) -> None:
    with pytest.raises(ValueError, match=r"must be finite in torch.float32, the dtype the attack"):
        attack(model, X)
    attack(model.double(), X.double())  # fine in float64


@pytest.mark.parametrize(
    "answer, match",
    [
        (lambda l: None, r"must return a boolean tensor of shape \(3,\), got NoneType"),
        (lambda l: (l[:, 0] > 0).tolist(), r"must return a boolean tensor .*, got list"),
        (
            lambda l: (l[:, 0] > 0).numpy(),
            r"must .* of the model's framework \(Tensor\), got ndarray",
        ),
    ],
)
def test_success_predicate_answering_no_tensor_of_the_models_framework(
    model: nn.Module, answer, match: str
) -> None:
    with pytest.raises(TypeError, match=rf"is_adversarial {match}"):
        alma(model, X, Y, steps=2, is_adversarial=lambda inputs, logits: answer(logits.detach()))


def test_masks_of_strings_are_refused_naming_the_dtype() -> None:
    net = nn.Conv2d(1, 3, 1)
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    with pytest.raises(TypeError, match=r"masks must hold booleans or 0/1 values, got dtype <U1"):
        alma_prox(net, X, labels, masks=np.full((3, 4, 4), "a"), steps=2)
