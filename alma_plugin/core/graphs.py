"""A solver's steps, run one by one or replayed as CUDA graphs (``cuda_graphs=True``).

After step 0 a step of ALMA or ALMA prox reads nothing back to the host
(``tests/core/test_cuda.py``): it is a fixed sequence of kernels on tensors of fixed shapes. On a
GPU with a small model, launching those kernels one by one costs more than running them (about
190 launches per ALMA step beyond the model's, docs/performance.md "Where a GPU step goes"). A CUDA
graph records the whole step once — the model's forward and backward, the distance, the
penalty, the update — and replays it with one launch.

The solver writes a step as a pure function ``step(state, t, clock) -> (state, outputs)``:

- ``state``: a tuple (a NamedTuple) of the tensors carried from step to step;
- ``t``: the step's index as a Python int, for the decisions the code takes in Python (step 0,
  a check every M steps); :func:`run_steps` records one graph per ``kind(t)``;
- ``clock``: the step's index as a number for the arithmetic (``t`` itself when run one by one,
  a 0-d int64 device tensor that the graph increments when replayed).

:class:`Steps` runs it. One by one, it is the plain loop. With graphs, the first ``warmup``
steps run one by one on a side stream (CUDA's lazy initialisations must not happen during a
capture), then each kind of step is captured once, with its inputs in buffers of our own that
each replay overwrites with the step's results, and replayed. The kernels are the same as one
by one, so the results are the same numbers.

What a graph cannot do: anything the step does in Python runs only when it is captured. A
model's forward hooks, a call counter in ``forward`` or a Python ``is_adversarial`` with side
effects run for the warm-up and the capture, not for every step; a model that reads a value
back to the host during a step (``.item()``, a data-dependent branch) cannot be captured, and
that is a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, cast

import eagerpy as ep

from .result import StepInfo
from .validation import check_flag

__all__ = ["Steps", "check_cuda_graphs", "pick", "run_steps", "warmup_stream"]

S = TypeVar("S", bound=tuple[Any, ...])
Outputs = tuple[ep.Tensor, ...]
Step = Callable[[S, int, Any], tuple[S, Outputs]]

#: Steps run one by one before any capture: cuBLAS / cuDNN handles, autograd's stream set-up
#: and the caching allocator's first blocks must exist before a capture (PyTorch's CUDA graphs
#: notes ask for a few warm-up iterations on a side stream).
WARMUP_STEPS = 3

_NEEDS_CUDA = (
    "cuda_graphs=True replays each step as a CUDA graph, so it needs PyTorch tensors on a CUDA "
    "device"
)


def check_cuda_graphs(cuda_graphs: object, inputs: ep.Tensor) -> bool:
    """``cuda_graphs`` as a bool, refused (clearly) where it cannot work: not a bool, or inputs
    that are not PyTorch tensors on a CUDA device."""
    if not check_flag("cuda_graphs", cuda_graphs):  # a bool (NumPy's too), as targeted
        return False
    if not isinstance(inputs, ep.PyTorchTensor):
        raise ValueError(f"{_NEEDS_CUDA}: got {type(inputs.raw).__name__} inputs")
    if inputs.raw.device.type != "cuda":
        raise ValueError(f"{_NEEDS_CUDA}: got inputs on {inputs.raw.device}")
    return True


class Steps(Generic[S]):
    """Runs ``step`` for t = 0, 1, … (:meth:`run`), keeping its state in :attr:`state`.

    ``graphs=False``: ``step(state, t, t)``, nothing else. ``graphs=True`` (PyTorch, CUDA):
    steps ``0 … warmup − 1`` as above on a side stream, then one CUDA graph per ``kind(t)``,
    captured the first time that kind comes and replayed from then on. The graphs share one
    memory pool (they never run at the same time) and read and write the same state buffers.
    Outputs of a replayed step live in the graph's memory and are overwritten by the next
    replay of that graph: :meth:`run` copies them only when ``copy_outputs`` asks.
    """

    def __init__(
        self,
        step: Step[S],
        state: S,
        *,
        graphs: bool = False,
        kind: Callable[[int], Hashable] = lambda t: None,
        copy_outputs: bool = False,
        warmup: int = WARMUP_STEPS,
    ) -> None:
        self.step, self.state, self.graphs, self.kind = step, state, graphs, kind
        self.copy_outputs, self.warmup = copy_outputs, max(warmup, 1)
        self._replays: dict[Hashable, Callable[[], Outputs]] = {}
        self._pool: Any = None
        self._clock: ep.Tensor | None = None

    def run(self, t: int) -> Outputs:
        """Step ``t`` (called with t = 0, 1, 2, … in order): the new state goes to
        :attr:`state`, the step's outputs are returned."""
        if not self.graphs:
            self.state, outputs = self.step(self.state, t, t)
            return outputs
        if t < self.warmup:
            return self._warm(t)
        if self._clock is None:  # buffers of our own: a replay overwrites them in place
            buffers = [_buffer(s) for s in self.state]
            self.state = cast(S, getattr(self.state, "_make", tuple)(buffers))
            self._clock = ep.astensor(_torch().tensor(t, device=_device(self.state)))
        key = self.kind(t)
        if key not in self._replays:
            self._replays[key] = self._record(t)
        outputs = self._replays[key]()
        if self.copy_outputs:
            return tuple(ep.astensor(o.raw.clone()) for o in outputs)
        return outputs

    def run_all(
        self,
        steps: int | Callable[[], int],
        *,
        offset: int = 0,
        callback: Callable[[StepInfo], None] | None = None,
        stop_after: Callable[[int], bool] | None = None,
    ) -> int:
        """Steps 0 … ``steps`` − 1; returns how many ran. ``steps`` may be a function, read
        after every step (a solver's run 0 learns its length at its first forward). The
        callback gets ``StepInfo(offset + t, *outputs)``. With ``stop_after``, the state's 0-d
        ``stopped`` flag (kept on the device by the step) is read after each step t where
        ``stop_after(t)`` (one read every M steps) and ends the run where it holds."""
        length = steps if callable(steps) else lambda: steps
        t = 0
        while t < length():
            outputs = self.run(t)
            if callback is not None:
                callback(StepInfo(offset + t, *outputs))
            t += 1
            if stop_after is not None and stop_after(t - 1) and _stopped(self.state):
                break
        return t

    def _warm(self, t: int) -> Outputs:
        """Step ``t`` run one by one, on the device's warm-up stream."""
        torch = _torch()
        device = _device(self.state)
        with torch.cuda.device(device):  # the inputs' GPU, whichever is current
            side = warmup_stream(device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.state, outputs = self.step(self.state, t, t)
            torch.cuda.current_stream().wait_stream(side)
        return outputs

    def _record(self, t: int) -> Callable[[], Outputs]:
        """Capture :meth:`_body` at step ``t`` as a CUDA graph; return its replay."""
        torch = _torch()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.device(_device(self.state)), torch.cuda.graph(graph, pool=self._pool):
                outputs = self._body(t)
        except RuntimeError as error:
            raise ValueError(
                "cuda_graphs=True could not record a step as a CUDA graph: every step must be "
                "the same kernels without reading anything back to the host, but the model (or "
                "is_adversarial / the distance) did something a graph cannot record, such as "
                f".item(), a data-dependent branch or a CPU tensor. PyTorch said: {error}"
            ) from error
        self._pool = graph.pool()

        def replay() -> Outputs:
            graph.replay()
            return outputs

        return replay

    def _body(self, t: int) -> Outputs:
        """What a graph records: the step from the state buffers, its results written back into
        them, the clock advanced."""
        assert self._clock is not None
        new_state, outputs = self.step(self.state, t, self._clock)
        for buffer, value in zip(self.state, _unaliased(new_state, self.state), strict=True):
            buffer.raw.copy_(value)
        self._clock.raw.add_(1)
        return outputs


#: One warm-up stream per device for the whole process: PyTorch keeps a cuBLAS workspace
#: (tens of MiB) for every stream that ran a matrix product, so a new stream per attack would
#: leak one workspace per call.
_WARMUP_STREAMS: dict[Any, Any] = {}


def warmup_stream(device: Any) -> Any:
    """The process's side stream for warm-up work on ``device`` before a CUDA-graph capture."""
    if device not in _WARMUP_STREAMS:
        _WARMUP_STREAMS[device] = _torch().cuda.Stream(device)
    return _WARMUP_STREAMS[device]


def _stopped(state: Any) -> bool:
    """The state's 0-d ``stopped`` flag, read back from the device."""
    return bool(state.stopped.item())


def _torch() -> Any:
    import torch

    return torch


def run_steps(
    step: Step[S],
    state: S,
    steps: int | Callable[[], int],
    *,
    check_steps: int,
    graphs: bool = False,
    offset: int = 0,
    callback: Callable[[StepInfo], None] | None = None,
    early_stop: bool = False,
) -> tuple[S, int]:
    """A solver's loop: ``step`` for t = 0 … ``steps`` − 1 (:class:`Steps`; ``steps`` may be a
    function, read after every step), whose kinds are
    the ρ-check steps ((t + 1) % M = 0, M = ``check_steps``) and the others; with
    ``early_stop``, the state's ``stopped`` flag is read after each check step. Returns the
    final state and the number of steps run."""

    def is_check(t: int) -> bool:
        return (t + 1) % check_steps == 0

    stepper = Steps(step, state, graphs=graphs, kind=is_check, copy_outputs=callback is not None)
    ran = stepper.run_all(steps, offset=offset, callback=callback,
                          stop_after=is_check if early_stop else None)  # fmt: skip
    return stepper.state, ran


def pick(table: ep.Tensor, clock: ep.Tensor) -> ep.Tensor:
    """``table[clock]`` for a 0-d device index: ``index_select`` reads nothing back to the host
    (indexing with a 0-d tensor would convert it to a Python int)."""
    return ep.astensor(table.raw.index_select(0, clock.raw.reshape(1)).squeeze(0))


def _buffer(value: Any) -> Any:
    return ep.astensor(value.raw.clone()) if isinstance(value, ep.Tensor) else value


def _device(state: tuple[Any, ...]) -> Any:
    return next(s.raw.device for s in state if isinstance(s, ep.Tensor))


def _unaliased(new_state: tuple[Any, ...], buffers: tuple[Any, ...]) -> list[Any]:
    """The new state's raw tensors, copied first where one is another slot's buffer (a step
    that passes a value from one slot to another), so that no copy reads an overwritten slot."""
    addresses = {b.raw.data_ptr(): i for i, b in enumerate(buffers) if isinstance(b, ep.Tensor)}
    sources = []
    for i, value in enumerate(new_state):
        raw = value.raw
        if addresses.get(raw.data_ptr(), i) != i:
            raw = raw.clone()
        sources.append(raw)
    return sources
