"""The global random generators and memory, for every seeded entry point on tiny models:

- the global generators (torch, NumPy, Python): a seeded attack neither draws from nor reseeds
  them, and returns the same bits whatever their state; where the documentation says an attack
  draws from torch's generator (``lagrangian(seed=None)``), it does;
- memory: the live tensors, the autograd tensors saved for backward and the Python objects do
  not grow with the number of steps or of calls, and no hook or attribute is left on the model;
  results carry no graph."""

from __future__ import annotations

import functools
import gc
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import alma_plugin as ap
from alma_plugin.foolbox import CIEDE2000ALMA, L2ALMA, LPIPSALMA, SSIMALMA, LinfALMAProx
from alma_plugin.torchattacks import ALMA, Lagrangian, MinimalEnsemble
from alma_plugin.training import adversarial_training

from .common import (
    CLASSES,
    SIZE,
    Tiny,
    X,
    Y,
    changed,
    fmodel,
    model_state,
    numpy_global_state,
    prepared,
    process_state,
)

# --- global random generators ---------------------------------------------------------------


class _Flat(nn.Module):
    """Constant logits: the gradient vanishes everywhere, so ALMA draws random directions."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.fc = nn.Linear(3 * SIZE * SIZE, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x.flatten(1)) - 1e4) + torch.arange(float(CLASSES))


def _iterate_distances(model: nn.Module, seed: int) -> torch.Tensor:
    """D of every iterate (the model is never fooled: the adversarials are the inputs)."""
    distances: list[torch.Tensor] = []
    ap.alma(model, X, Y, steps=5, seed=seed, callback=lambda i: distances.append(i.distance))
    return torch.stack(distances)


def _trajectory(attack: Callable[..., Any], seed: int, **kwargs: Any) -> torch.Tensor:
    """The adversarials, then D of every iterate: the second run's random start shows there even
    where run 0's adversarials stay the best."""
    distances: list[torch.Tensor] = []
    result = attack(
        Tiny().eval(),
        X,
        Y,
        steps=20,
        restarts=2,
        seed=seed,
        callback=lambda i: distances.append(i.distance),
        **kwargs,
    )
    return torch.cat([result.adversarials.flatten(), torch.stack(distances).flatten()])


#: Where the returned adversarials may not show the seed (run 0's stay the best); the other
#: entries of RANDOM must return other bits for another seed.
SEED_NOT_VISIBLE = {"foolbox-LinfALMAProx-restarts"}

#: Seeded entry points that draw random numbers, as call(seed).
RANDOM: dict[str, Callable[[int], torch.Tensor]] = {
    "alma-vanishing-gradient": lambda s: _iterate_distances(_Flat().eval(), s),
    "alma-restarts": lambda s: _trajectory(ap.alma, s),
    "alma-ssim-restarts": lambda s: _trajectory(ap.alma, s, distance="ssim"),
    "alma_prox-restarts": lambda s: _trajectory(ap.alma_prox, s),
    "lagrangian": lambda s: ap.lagrangian(Tiny().eval(), X, Y, seed=s).perturbed,
    # With the default smoothed max run 0's adversarials stay the best on Tiny; with DLR⁺'s own
    # gradient (smooth_max=0) run 1 improves some, so the returned bits show the seed.
    "foolbox-L2ALMA-restarts": lambda s: L2ALMA(steps=20, restarts=2, seed=s, smooth_max=0)(
        fmodel(Tiny().eval()), X, Y, epsilons=None
    )[0],
    "foolbox-LinfALMAProx-restarts": lambda s: LinfALMAProx(steps=20, restarts=2, seed=s)(
        fmodel(Tiny().eval()), X, Y, epsilons=None
    )[0],
    "torchattacks-ALMA-restarts": lambda s: ALMA(
        Tiny().eval(), steps=20, restarts=2, seed=s, smooth_max=0
    )(X, Y),
    "torchattacks-Lagrangian": lambda s: Lagrangian(Tiny().eval(), seed=s)(X, Y),
    "MinimalEnsemble": lambda s: MinimalEnsemble(
        [ALMA(Tiny().eval(), "l2", steps=20, restarts=2, seed=s, smooth_max=0)]
    )(X, Y),
}


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global generator is the subject
    random.seed(seed)


def _generators() -> tuple[Any, ...]:
    return (torch.get_rng_state().tolist(), *numpy_global_state(), random.getstate())


@pytest.mark.parametrize("entry", list(RANDOM))
def test_a_seeded_attack_leaves_the_global_generators_alone_and_repeats(entry: str) -> None:
    """Neither drawn from nor reseeded (unlike torchattacks' FAB and APGD, which reseed torch's,
    or random starts drawn from it), and the same bits whatever their state; the seed matters."""
    _seed_globals(123)
    before = _generators()
    first = RANDOM[entry](3)
    assert _generators() == before
    _seed_globals(999)
    assert torch.equal(RANDOM[entry](3), first)
    if entry not in SEED_NOT_VISIBLE:
        assert not torch.equal(RANDOM[entry](4), first)


def test_lagrangian_without_a_seed_draws_from_torchs_generator() -> None:
    """As documented (and as torchattacks' random starts): fresh noise at every call, the same
    after the same ``torch.manual_seed``; NumPy's and Python's generators untouched."""
    model = Tiny().eval()
    for call in (lambda: ap.lagrangian(model, X, Y).perturbed, lambda: Lagrangian(model)(X, Y)):
        _seed_globals(5)
        numpy_before, python_before = numpy_global_state(), random.getstate()
        first, second = call(), call()
        assert not torch.equal(first, second)
        assert numpy_global_state() == numpy_before
        assert random.getstate() == python_before
        torch.manual_seed(5)
        assert torch.equal(call(), first)


def test_alma_prox_with_one_run_draws_nothing() -> None:
    """Documented: run 0 starts at δ = 0 and draws nothing, so the seed does not matter."""
    model = Tiny().eval()
    results = [ap.alma_prox(model, X, Y, steps=20, seed=s).adversarials for s in (0, 1)]
    assert torch.equal(*results)


# --- memory ---------------------------------------------------------------------------------


class _SavedForBackward:
    """Counts the tensors autograd keeps for a backward pass (saved_tensors_hooks): a graph kept
    alive from step to step keeps its saved tensors, and the count grows with the steps."""

    live = 0

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        _SavedForBackward.live += 1

    def __del__(self) -> None:
        _SavedForBackward.live -= 1


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Everything alive before the test moved out of the collector's sight (``gc.freeze``):
    :func:`_live` then counts, and collects, only what the test created. The counts compare
    two moments of one test, so nothing older can change them; a full collection of the
    heap the other tests left (JAX, TensorFlow, Foolbox loaded: millions of objects) took
    seconds per count."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _live() -> tuple[int, int, int]:
    """(live torch tensors, autograd-saved tensors, gc-tracked Python objects)."""
    gc.collect()
    objects = gc.get_objects()
    tensors = sum(isinstance(o, torch.Tensor) for o in objects)
    return tensors, _SavedForBackward.live, len(objects)


@functools.cache
def _lpips() -> Any:
    """LPIPS with seeded random weights (nothing to download), built once."""
    from tests.distances.test_lpips import _random_backbone, _random_linear

    return ap.distances.LPIPS(backbone_weights=_random_backbone(), linear_weights=_random_linear())


GROWTH: dict[str, Callable[[nn.Module, int], Any]] = {
    "alma-l2": lambda m, s: ap.alma(m, X, Y, steps=s),
    "alma-l2-one-run": lambda m, s: ap.alma(m, X, Y, steps=s, restarts=1),
    "alma-l2-early_stop": lambda m, s: ap.alma(m, X, Y, steps=s, early_stop=1e-9),
    "alma-linf": lambda m, s: ap.alma(m, X, Y, distance="linf", steps=s),
    "alma-ciede2000": lambda m, s: ap.alma(m, X, Y, distance="ciede2000", steps=s),
    "alma-ssim": lambda m, s: ap.alma(m, X, Y, distance="ssim", steps=s),
    "alma-lpips": lambda m, s: ap.alma(
        m, torch.rand(2, 3, 32, 32), Y[:2], distance="lpips", steps=s, lpips=_lpips()
    ),
    "alma_prox": lambda m, s: ap.alma_prox(m, X, Y, steps=s),
    "lagrangian": lambda m, s: ap.lagrangian(m, X, Y, steps=s, seed=0),
    "foolbox-L2ALMA": lambda m, s: L2ALMA(steps=s)(fmodel(m), X, Y, epsilons=None),
    "foolbox-LinfALMAProx": lambda m, s: LinfALMAProx(steps=s)(fmodel(m), X, Y, epsilons=None),
    "foolbox-CIEDE2000ALMA": lambda m, s: CIEDE2000ALMA(steps=s)(fmodel(m), X, Y, epsilons=None),
    "foolbox-SSIMALMA": lambda m, s: SSIMALMA(steps=s)(fmodel(m), X, Y, epsilons=None),
    "foolbox-LPIPSALMA": lambda m, s: LPIPSALMA(steps=s, lpips=_lpips())(
        fmodel(m), torch.rand(2, 3, 32, 32), Y[:2], epsilons=None
    ),
    "torchattacks-ALMA-ssim": lambda m, s: ALMA(m, "ssim", steps=s)(X, Y),
    "torchattacks-ALMA-linf": lambda m, s: ALMA(m, "linf", steps=s)(X, Y),
    "torchattacks-Lagrangian": lambda m, s: Lagrangian(m, steps=s, seed=0)(X, Y),
    "MinimalEnsemble": lambda m, s: MinimalEnsemble([ALMA(m, "l2", steps=s)])(X, Y),
    "adversarial_training": lambda m, s: adversarial_training(
        m,
        [(X, Y)] * (s // 3 + 1),
        attack=Lagrangian(m, steps=1, seed=0),
        epochs=1,
        optimizer=torch.optim.SGD(m.parameters(), lr=0.01),
        progress=False,
        log=None,
    ),  # 3 forwards per batch: the attack's, the judging, the update
}


#: The entries that run ALMA-ℓ2 with its default class restarts (two runs, 70 + 30 steps).
CLASS_RESTARTS = ("alma-l2", "alma-l2-early_stop", "foolbox-L2ALMA", "MinimalEnsemble")


class _AnySize(nn.Module):
    """Tiny's linear map on the mean over the spatial size (for 32 x 32 LPIPS inputs)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.fc = nn.Linear(3, CLASSES)
        self.probe: Callable[[int], None] | None = None
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.probe is not None:
            self.probe(self.calls)
        return self.fc(x.mean(dim=(2, 3)) * 10)


@pytest.mark.parametrize("entry", list(GROWTH))
@pytest.mark.usefixtures("frozen_heap")
def test_memory_does_not_grow_with_the_steps(entry: str) -> None:
    """Live tensors, tensors saved for backward and Python objects at the model's 12th (ALMA-ℓ2
    with its default class restarts: 75th, in run 1, steps 70–99, after run 0's result is
    held) and 100th (LPIPS: 60th) forward of one call: a history kept per step, or a graph kept
    alive, would add one or more per step."""
    model: Any = _AnySize() if "lpips" in entry.lower() else Tiny()
    model.eval()
    counts: dict[int, tuple[int, int, int]] = {}
    # adversarial_training: the update's forwards (every 3rd), a phase of the same live set;
    # LPIPS (an AlexNet per step): fewer steps
    late = {"adversarial_training": 99, "alma-lpips": 60, "foolbox-LPIPSALMA": 60}.get(entry, 100)
    early = 75 if entry in CLASS_RESTARTS else 12
    model.probe = lambda call: counts.__setitem__(call, _live()) if call in (early, late) else None
    with (
        warnings.catch_warnings(),
        torch.autograd.graph.saved_tensors_hooks(_SavedForBackward, lambda saved: saved.tensor),
    ):
        warnings.simplefilter("ignore")
        GROWTH[entry](model, late)
    (tensors, saved, objects), (tensors_late, saved_late, objects_late) = (
        counts[early],
        counts[late],
    )
    assert tensors_late <= tensors + 3, (tensors, tensors_late)
    assert saved_late <= saved + 3, (saved, saved_late)
    assert objects_late <= objects + 40, (objects, objects_late)


REPEATED: dict[str, Callable[[nn.Module], Any]] = {
    "alma-l2": lambda m: ap.alma(m, X, Y, steps=3),
    "alma-ssim": lambda m: ap.alma(m, X, Y, distance="ssim", steps=3),
    "alma_prox": lambda m: ap.alma_prox(m, X, Y, steps=3),
    "lagrangian": lambda m: ap.lagrangian(m, X, Y, steps=2, seed=0),
    "foolbox-L2ALMA": lambda m: L2ALMA(steps=3)(fmodel(m), X, Y, epsilons=None),
    "foolbox-SSIMALMA": lambda m: SSIMALMA(steps=3)(fmodel(m), X, Y, epsilons=None),
    "torchattacks-ALMA": lambda m: ALMA(m, "l2", steps=3)(X, Y),
    "torchattacks-Lagrangian": lambda m: Lagrangian(m, steps=2, seed=0)(X, Y),
    "MinimalEnsemble": lambda m: MinimalEnsemble(
        [ALMA(m, "l2", steps=2), ALMA(m, "linf", steps=2)]
    )(X, Y),
}


def _graph_free(result: Any) -> None:
    values = result if isinstance(result, tuple) else (result,)
    for value in values:
        tensors = [
            getattr(value, f)
            for f in ("adversarials", "distances", "perturbed", "norms")
            if hasattr(value, f)
        ] or [value]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                assert tensor.grad_fn is None and not tensor.requires_grad


@pytest.mark.parametrize("entry", list(REPEATED))
@pytest.mark.usefixtures("frozen_heap")
def test_repeated_calls_leave_nothing_behind(entry: str) -> None:
    """30 calls on the same model: no tensor, Python object, hook or attribute accumulates
    (caches keyed on tensors, hooks left registered, wrapped forwards), results graph-free."""
    model = prepared(Tiny())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):  # per-size caches (SSIM's filter matrices) fill on the first call
            REPEATED[entry](model)
        model_before, globals_before = model_state(model), process_state()  # (tensors of their own)
        before = _live()
        for _ in range(30):
            _graph_free(REPEATED[entry](model))
        globals_after = process_state()
    after = _live()
    assert after[0] <= before[0], (before, after)
    assert after[2] <= before[2] + 40, (before, after)
    assert changed(model_before, model_state(model)) == []
    assert changed(globals_before, globals_after) == []
