"""``cuda_graphs=True``: steps replayed as CUDA graphs (``alma_plugin.core.graphs``).

On the CPU: the clear errors, and the replayed arithmetic. :class:`Rerun` is :class:`Steps`
with the capture replaced by running the recorded function again, so every step after the
warm-up takes the path a replayed graph takes — the state in our own buffers, written back in
place, the step's index read from a device tensor (the schedules, t*, ALMA prox's λ⁽ᵗ⁾, 1 − αᵗ
and masking ranks from tables) — and must give the plain loop's result. On a CUDA device
(skipped elsewhere): the graphs themselves against the plain loop, with no synchronisation per
step, the model's Python code run for the warm-up and the captures only, and a model that
synchronises refused.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from typing import Any

import eagerpy as ep
import pytest
import torch
from torch import nn

from alma_plugin import ALMAParams, ProxParams, alma, alma_prox
from alma_plugin.core import graphs, prox_solver, solver
from alma_plugin.core.graphs import WARMUP_STEPS, Steps
from alma_plugin.distances import get_distance

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Rerun(Steps[Any]):
    """Steps whose 'graph' is the recorded function run again at each replay (CPU)."""

    def _warm(self, t: int) -> Any:
        self.state, outputs = self.step(self.state, t, t)
        return outputs

    def _record(self, t: int) -> Callable[[], Any]:
        return lambda: self._body(t)


def _classifier(n: int = 8, size: int = 4, seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 16), nn.ReLU(),
                          nn.Linear(16, 5)).to(device).eval()  # fmt: skip
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _segmenter(n: int = 3, size: int = 6, device: str = "cpu"):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).to(device).eval()  # fmt: skip
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _alma_core(model, x, y, *, graphs: bool, distance: str = "l2", steps: int = 30, **options):
    kwargs = {k: options.pop(k) for k in ("early_stop", "targeted", "callback") if k in options}
    spec = get_distance(distance)
    params = ALMAParams(**options).for_budget(steps, spec.init_lr_distance, spec.smooth_max)
    return solver.alma_solve(lambda u: model(u.raw), ep.astensor(x), ep.astensor(y),
                             distance=get_distance(distance).objective, params=params,
                             steps=steps, cuda_graphs=graphs, **kwargs)  # fmt: skip


def _prox_core(model, x, y, *, graphs: bool, steps: int = 30, task: str = "classification",
               **kwargs):  # fmt: skip
    params = ProxParams().for_task(task)
    return prox_solver.alma_prox_solve(lambda u: model(u.raw), ep.astensor(x), ep.astensor(y),
                                       params=params, steps=steps, cuda_graphs=graphs,
                                       adv_threshold=0.9 if task != "classification" else 1.0,
                                       **kwargs)  # fmt: skip


def _same(a, b) -> None:
    assert torch.equal(a.adversarials.raw, b.adversarials.raw)
    assert torch.equal(a.distances.raw, b.distances.raw)
    assert torch.equal(a.first_success_step.raw, b.first_success_step.raw)
    assert a.steps_run == b.steps_run


# --- clear errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("attack", [alma, alma_prox])
def test_cuda_graphs_needs_pytorch_on_cuda(attack) -> None:
    model, x, y = _classifier()
    with pytest.raises(ValueError, match=r"cuda_graphs=True .* CUDA device: got inputs on cpu"):
        attack(model, x, y, steps=5, cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool, got 'yes'"):
        attack(model, x, y, steps=5, cuda_graphs="yes")


def test_cuda_graphs_refuses_other_frameworks() -> None:
    import numpy as np

    jnp = pytest.importorskip("jax.numpy")
    w = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    x = jnp.asarray(np.random.default_rng(1).random((2, 12), dtype=np.float32))
    with pytest.raises(ValueError, match="needs PyTorch tensors on a CUDA device: got"):
        alma(lambda u: u @ w, x, jnp.asarray([0, 1]), steps=5, cuda_graphs=True)


def test_host_classes_check_cuda_graphs() -> None:
    fb = pytest.importorskip("foolbox")
    from alma_plugin.foolbox import L2ALMA, LinfALMAProx
    from alma_plugin.torchattacks import ALMA

    model, x, y = _classifier()
    for cls in (L2ALMA, LinfALMAProx):
        with pytest.raises(TypeError, match="cuda_graphs must be a bool, got 1"):
            cls(cuda_graphs=1)
        attack = cls(steps=5, cuda_graphs=True)
        assert "cuda_graphs=True" in repr(attack)
        assert "cuda_graphs" not in repr(cls(steps=5))
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        with pytest.raises(ValueError, match="needs PyTorch tensors on a CUDA device"):
            attack(fmodel, x, y, epsilons=None)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool, got 'no'"):
        ALMA(model, cuda_graphs="no")
    attack = ALMA(model, steps=5, cuda_graphs=True)
    with pytest.raises(ValueError, match="needs PyTorch tensors on a CUDA device"):
        attack(x, y)


# --- the replayed arithmetic, on the CPU ----------------------------------------------------


@pytest.fixture
def rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphs, "Steps", Rerun)  # what run_steps builds


ALMA_CASES = [
    dict(distance="l2"),
    dict(distance="l1", early_stop=0.05),
    dict(distance="l2", restarts=2, restart_mode="classes"),
    dict(distance="l2", restarts=3),
    dict(distance="ciede2000"),
    dict(distance="l2", levels=256, targeted=True),
]


@pytest.mark.parametrize("case", ALMA_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_replayed_alma_steps_give_the_plain_loop_s_result(rerun, case: dict) -> None:
    model, x, y = _classifier(n=6, size=4 if case["distance"] != "ciede2000" else 8)
    if case.get("targeted"):
        y = (y + 1) % 5
    _same(_alma_core(model, x, y, graphs=True, **case),
          _alma_core(model, x, y, graphs=False, **case))  # fmt: skip


@pytest.mark.parametrize("schedule", ["exponential", "cosine"])
def test_replayed_schedules_match_to_the_last_bits(rerun, schedule: str) -> None:
    """The factor of these schedules is computed on the device in float64 when replayed."""
    model, x, y = _classifier()
    replayed = _alma_core(model, x, y, graphs=True, schedule=schedule)
    plain = _alma_core(model, x, y, graphs=False, schedule=schedule)
    assert torch.allclose(replayed.distances.raw, plain.distances.raw, rtol=1e-5, atol=0)
    assert torch.equal(replayed.success.raw, plain.success.raw)


def test_replayed_steps_report_the_same_step_info(rerun) -> None:
    model, x, y = _classifier()
    seen: dict[bool, list[tuple]] = {True: [], False: []}
    for graphs_ in (True, False):

        def callback(info, log=seen[graphs_]) -> None:
            log.append((info.step, *(v.raw.clone() for v in (info.distance, info.constraint,
                                                               info.mu, info.rho,
                                                               info.step_size))))  # fmt: skip

        _alma_core(model, x, y, graphs=graphs_, steps=25, callback=callback)
    assert [s[0] for s in seen[True]] == list(range(25))
    for replayed, plain in zip(seen[True], seen[False], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(replayed[1:], plain[1:], strict=True))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_replayed_prox_steps_give_the_plain_loop_s_result(rerun, task: str) -> None:
    """Results, and every step's μ (which the masking of eq. 5.6 zeroes outside m̃⁽ᵗ⁾, so a
    wrong rank shows) and λ⁽ᵗ⁾."""
    model, x, y = _classifier() if task == "classification" else _segmenter()
    logs: dict[bool, list] = {True: [], False: []}
    runs = {}
    for g in (True, False):

        def callback(info, log=logs[g]) -> None:
            log.append((info.mu.raw.clone(), info.step_size.raw.clone()))

        runs[g] = _prox_core(model, x, y, graphs=g, task=task, callback=callback)
    replayed, plain = runs[True], runs[False]
    assert torch.equal(replayed.success.raw, plain.success.raw)
    assert torch.allclose(replayed.distances.raw, plain.distances.raw, rtol=1e-4, atol=1e-7)
    assert torch.equal(replayed.first_success_step.raw, plain.first_success_step.raw)
    for (mu, lr), (mu_plain, lr_plain) in zip(logs[True], logs[False], strict=True):
        assert torch.allclose(mu, mu_plain, rtol=1e-3, atol=1e-6)
        assert torch.equal(lr, lr_plain)


def test_unaliased_copies_a_value_moved_between_slots() -> None:
    """A step that hands slot 0's value to slot 1 while slot 0 gets a new one: slot 1 must
    receive the old value, not the new one written into slot 0 first."""
    a, b = ep.astensor(torch.zeros(3)), ep.astensor(torch.ones(3))
    state = (a, b)

    def step(s, t, clock):
        return (s[0] + 1, s[0]), ()

    stepper = Rerun(step, state, graphs=True, warmup=1)
    stepper.run(0)  # (1, 0)
    stepper.run(1)  # replayed: (2, 1), slot 1 copied from slot 0 before slot 0 is written
    stepper.run(2)
    assert stepper.state[0].raw.tolist() == [3.0] * 3
    assert stepper.state[1].raw.tolist() == [2.0] * 3


# --- CUDA -----------------------------------------------------------------------------------

CUDA_DISTANCES = [("l2", 4), ("l1", 4), ("ciede2000", 8), ("ssim", 16), ("lpips", 32)]


def _lpips_for(distance: str) -> dict:
    if distance != "lpips":
        return {}
    from alma_plugin.bench.throughput import make_distance

    return {"lpips": make_distance("lpips", torch.device("cuda"))}


@needs_cuda
@pytest.mark.parametrize(("distance", "size"), CUDA_DISTANCES)
@pytest.mark.parametrize("early_stop", [None, 0.5])
def test_graphs_give_the_plain_loop_s_result_on_cuda(distance, size, early_stop) -> None:
    model, x, y = _classifier(size=size, device="cuda")
    runs = [alma(model, x, y, distance=distance, steps=40, early_stop=early_stop,
                 cuda_graphs=g, **_lpips_for(distance)) for g in (True, False)]  # fmt: skip
    for field in ("adversarials", "distances", "first_success_step", "success"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field
    assert runs[0].steps_run == runs[1].steps_run


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_graphs_with_half_precision_models(dtype: torch.dtype) -> None:
    """The model called in its dtype, the state in float32: replayed as in the plain loop."""
    model, x, y = _classifier(device="cuda")
    model = model.to(dtype)
    x = x.to(dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    runs = [alma(model, x, y, steps=40, restarts=2, cuda_graphs=g) for g in (True, False)]
    for field in ("adversarials", "distances", "first_success_step"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field
    assert runs[0].adversarials.dtype == dtype


@needs_cuda
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_prox_graphs_match_the_plain_loop_on_cuda(task: str) -> None:
    model, x, y = _classifier(device="cuda") if task == "classification" else _segmenter(
        device="cuda")  # fmt: skip
    runs = [alma_prox(model, x, y, steps=40, cuda_graphs=g) for g in (True, False)]
    assert torch.equal(runs[0].success, runs[1].success)
    assert torch.allclose(runs[0].distances, runs[1].distances, rtol=1e-4, atol=1e-7)


@needs_cuda
@pytest.mark.parametrize("attack", ["alma", "alma_prox"])
def test_graphs_read_nothing_back_per_step(attack: str) -> None:
    model, x, y = _classifier(device="cuda")
    counts: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def callback(info) -> None:
            counts.append(sum("called a synchronizing CUDA operation" in str(w.message)
                              for w in caught))  # fmt: skip
            torch.cuda.set_sync_debug_mode("warn" if info.step < 28 else 0)

        try:
            run = alma if attack == "alma" else alma_prox
            run(model, x, y, steps=30, cuda_graphs=True, callback=callback)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # From the first replayed step on (the captures themselves may synchronise once).
    per_step = [b - a for a, b in zip(counts, counts[1:], strict=False)]
    assert per_step[WARMUP_STEPS + 7 :] == [0] * len(per_step[WARMUP_STEPS + 7 :])


@needs_cuda
def test_the_model_runs_in_python_for_the_warmup_and_each_capture_only() -> None:
    model, x, y = _classifier(device="cuda")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    alma(model, x, y, steps=30, cuda_graphs=True)  # kinds: plain steps and ρ-check steps
    assert len(calls) == WARMUP_STEPS + 2


@needs_cuda
def test_a_model_that_synchronises_is_refused_clearly() -> None:
    model, x, y = _classifier(device="cuda")

    def syncing(u: torch.Tensor) -> torch.Tensor:
        logits = model(u)
        return logits * 2 if logits.max().item() > 1e9 else logits

    with pytest.raises(ValueError, match="could not record a step as a CUDA graph"):
        alma(syncing, x, y, steps=10, cuda_graphs=True)
    # the device is still usable afterwards
    assert alma(model, x, y, steps=10, cuda_graphs=True).success.any()


@needs_cuda
@pytest.mark.parametrize("attack", [alma, alma_prox])
def test_graph_memory_does_not_grow_with_steps_or_calls(attack) -> None:
    """Nothing stays allocated after a call (the graphs, their memory pool, the warm-up
    stream's cuBLAS workspace: one stream per device, not one per call), and 200 steps need
    no more memory than 20, but for the per-step tables (ALMA prox: λ⁽ᵗ⁾ and 1 − αᵗ, a few
    bytes per step)."""
    model, x, y = _classifier(device="cuda")
    attack(model, x, y, steps=20, cuda_graphs=True)  # the process's one-off allocations
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    peaks = []
    for steps in (20, 200, 20, 20):
        torch.cuda.reset_peak_memory_stats()
        attack(model, x, y, steps=steps, cuda_graphs=True)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated())
        assert torch.cuda.memory_allocated() == before, steps
    assert peaks[1] <= peaks[0] + 2 * 4 * 200 + 2**10


@needs_cuda
def test_host_classes_on_cuda() -> None:
    fb = pytest.importorskip("foolbox")
    from alma_plugin.foolbox import L2ALMA, LinfALMAProx
    from alma_plugin.torchattacks import ALMA

    model, x, y = _classifier(device="cuda")
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cuda")
    runs = [L2ALMA(steps=30, cuda_graphs=g)(fmodel, x, y, epsilons=None)[0] for g in (True, False)]
    assert torch.equal(runs[0], runs[1])  # ALMA: the same kernels, the same numbers
    runs = [LinfALMAProx(steps=30, cuda_graphs=g)(fmodel, x, y, epsilons=None)[0]
            for g in (True, False)]  # fmt: skip
    norms = [(r - x).flatten(1).abs().amax(1) for r in runs]
    assert torch.allclose(norms[0], norms[1], rtol=1e-4, atol=1e-7)
    runs = [ALMA(model, "l2", 30, cuda_graphs=g)(x, y) for g in (True, False)]
    assert torch.equal(runs[0], runs[1])
