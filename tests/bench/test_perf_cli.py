"""The performance commands (``python -m alma_plugin.bench.throughput`` and ``.step0``) and the
``--device`` argument shared by every benchmark command: tables, the rates and ratio they
report, the bare forward + backward loop they compare with, and argument errors (CPU only,
tiny models, a few steps)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from alma_plugin.bench import step0, sweep, throughput
from alma_plugin.bench.arguments import device_argument
from alma_plugin.zoo.models import SmallCNN
from tests.utils import CountingModel

CPU = torch.device("cpu")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """``--threads 1`` sets torch's global thread count: put it back for the next tests."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


class Counted(CountingModel):
    """:class:`tests.utils.CountingModel` that also records whether each input required a
    gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.input_requires_grad: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_requires_grad.append(x.requires_grad)
        return super().forward(x)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()


def _table_rows(stdout: str) -> list[dict[str, str]]:
    """The rows of the markdown table in ``stdout``, keyed by its header cells."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(lines) >= 2 and set(lines[1]) <= set("|-"), stdout
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, rows = cells[0], cells[2:]
    assert all(len(row) == len(header) for row in rows), stdout
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_throughput_prints_one_row_per_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    """The table has the steps/s, bare and ratio columns, one row per (distance, batch) —
    ``linf`` run by ALMA prox, the others by ALMA — and every rate and ratio it reports is a
    finite positive number (a NaN would mean a run's step-0 exclusion went wrong)."""
    # Best of 2: with one repeat, a loaded 2-core machine can make T_3 - T_1 <= 0 (NaN).
    argv = ["--steps", "3", "--repeats", "2", "--batch-sizes", "4", "--distances", "l2",
            "linf", "--threads", "1"]  # fmt: skip
    assert throughput.main(argv) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert {"steps/s", "bare fwd+bwd/s", "ALMA / bare"} <= set(rows[0])
    assert [(r["attack"], r["distance"], r["batch"], r["px"]) for r in rows] == [
        ("ALMA", "l2", "4", "28"),
        ("ALMA prox", "linf", "4", "28"),
    ]
    for row in rows:
        for column in ("steps/s", "bare fwd+bwd/s", "ALMA / bare"):
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (column, row)


def test_measure_reports_the_ratio_of_its_two_rates() -> None:
    """A real (tiny) configuration: the documented keys, and ``overhead`` (ALMA / bare) is the
    bare rate over ALMA's, i.e. how many bare forward + backward passes one ALMA step costs."""
    result = throughput.measure("l2", batch=4, image_size=28, device=CPU, steps=3, repeats=2)
    assert set(result) == {"attack", "distance", "batch", "image_size", "cuda_graphs",
                           "steps_per_s", "samples_steps_per_s", "step0_s",
                           "bare_steps_per_s", "overhead", "peak_memory"}  # fmt: skip
    assert (result["attack"], result["distance"], result["batch"]) == ("ALMA", "l2", 4)
    assert result["steps_per_s"] > 0 and result["bare_steps_per_s"] > 0
    expected = result["bare_steps_per_s"] / result["steps_per_s"]
    assert result["overhead"] == pytest.approx(expected, rel=1e-9)
    assert result["samples_steps_per_s"] == pytest.approx(4 * result["steps_per_s"], rel=1e-9)
    assert result["peak_memory"].endswith("MiB (process peak RSS)")


def test_measure_excludes_step_0_and_keeps_the_fastest_repeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the clocked runs replaced by known durations (a run of s steps: step 0, then s − 1
    later steps; the bare loop: s passes), slowed by a different factor in each repeat, the
    rates are exactly (steps − 1) / (min T_steps − min T_1) and steps / min T_bare, and the
    ratio is bare / ALMA: step 0 excluded, each run's fastest repeat kept."""
    step0_s, later_s, bare_s = 0.5, 0.02, 0.01
    one_slowdown, full_slowdown, bare_slowdown = (2.0, 1.0), (1.0, 3.0), (3.0, 1.0)
    repeat = -1  # a 1-step run starts each repeat; the warm-ups (2 steps) come before

    def fake_timed(model: Any, inputs: Any, labels: Any, distance: str, steps: int,
                   fn: Any = None, **graphs: Any) -> tuple[float, None]:  # fmt: skip
        nonlocal repeat
        seconds = step0_s + later_s * (steps - 1)
        if steps == 1:
            repeat += 1
            return seconds * one_slowdown[repeat], None
        return seconds * (full_slowdown[repeat] if repeat >= 0 else 1.0), None

    def fake_bare(model: Any, inputs: Any, steps: int, **graphs: Any) -> float:
        return bare_s * steps * (bare_slowdown[repeat] if repeat >= 0 else 1.0)

    monkeypatch.setattr(throughput, "timed_run", fake_timed)
    monkeypatch.setattr(throughput, "bare_run", fake_bare)
    result = throughput.measure("linf", batch=2, image_size=28, device=CPU, steps=11, repeats=2)
    assert repeat == 1
    assert result["attack"] == "ALMA prox"
    assert result["step0_s"] == pytest.approx(step0_s)
    assert result["steps_per_s"] == pytest.approx(1 / later_s)
    assert result["samples_steps_per_s"] == pytest.approx(2 / later_s)
    assert result["bare_steps_per_s"] == pytest.approx(1 / bare_s)
    assert result["overhead"] == pytest.approx(later_s / bare_s)


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_bare_run_makes_one_forward_and_backward_per_step(steps: int) -> None:
    """The baseline of ``ALMA / bare``: exactly ``steps`` forwards and backwards, each with a
    gradient w.r.t. the input (as ALMA's step) and none accumulated into the parameters; the
    caller's inputs are neither modified nor made to require a gradient."""
    model = Counted(_tiny_model())
    inputs = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    before = inputs.clone()
    seconds = throughput.bare_run(model, inputs, steps)
    assert isinstance(seconds, float) and seconds >= 0
    assert (model.forwards, model.backwards) == (steps, steps)
    assert model.input_requires_grad == [True] * steps
    assert all(p.grad is None for p in model.parameters())
    assert not inputs.requires_grad
    assert torch.equal(inputs, before)


@pytest.mark.parametrize("distance", ["l2", "l1", "linf"])
def test_timed_run_runs_the_budget_it_is_given(distance: str) -> None:
    """The numerator of ``ALMA / bare``: a run of ``steps`` steps makes ``steps`` forwards and
    backwards (ALMA for ℓ1 / ℓ2, ALMA prox for ℓ∞), so T_steps − T_1 is steps − 1 steps."""
    model = Counted(_tiny_model())
    inputs = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(inputs).argmax(1)
    for steps in (1, 4):
        model.forwards = model.backwards = 0
        seconds, result = throughput.timed_run(model, inputs, labels, distance, steps)
        assert seconds > 0 and result is not None
        assert (model.forwards, model.backwards) == (steps, steps)


def test_make_model_is_seeded_and_sized_by_the_image() -> None:
    """28 px: the embedded SmallCNN; larger: the ImageNet-sized stand-in (1000 classes); both in
    eval mode and the same weights on every call (the runs being compared share a model)."""
    small = throughput.make_model(28, CPU)
    assert isinstance(small, SmallCNN) and not small.training
    large = throughput.make_model(176, CPU)
    assert isinstance(large, throughput.SmallImageNetCNN) and not large.training
    assert large(torch.rand(1, 3, 176, 176)).shape == (1, 1000)
    again = throughput.make_model(176, CPU)
    for p, q in zip(large.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_make_distance_is_the_registry_function() -> None:
    """Every distance but LPIPS is the registry's own function, so ℓ1 / ℓ2 keep their identity
    (the solver recognises them by it for the closed-form η⁽⁰⁾)."""
    from alma_plugin.distances import get_distance

    for name in ("l1", "l2"):
        assert throughput.make_distance(name, CPU) is get_distance(name).function


def test_step0_reports_no_search_evaluation_for_l1_and_l2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At the smallest image size the command accepts: ℓ1 and ℓ2 take the closed-form η⁽⁰⁾, so
    the search evaluates D zero times (the counted calls minus the loss's own one), one row per
    distance, with finite positive timings."""
    argv = ["--distances", "l2", "l1", "--batch", "1", "--image-size", "176", "--steps", "2",
            "--repeats", "1", "--threads", "1"]  # fmt: skip
    assert step0.main(argv) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [(r["distance"], r["η⁽⁰⁾ search"], r["D evaluations"]) for r in rows] == [
        ("l2", "closed form / secant", "0"),
        ("l1", "closed form / secant", "0"),
    ]
    for row in rows:
        assert float(row["step 0 (s)"]) > 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "throughput": throughput.main,
    "step0": step0.main,
    "sweep": sweep.main,
}

DEVICE_ERRORS = [
    pytest.param("gpu0", "expected a torch device", id="gpu0"),
    pytest.param("meta", "expected 'cpu', 'cuda' or 'cuda:N'", id="meta"),
    pytest.param("cuda", "CUDA is not available", id="cuda", marks=NO_CUDA),
    pytest.param("cuda:1", "CUDA is not available", id="cuda:1", marks=NO_CUDA),
]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(("value", "expected"), DEVICE_ERRORS)
def test_bad_device_exits_2_naming_the_argument_and_value(
    command: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every benchmark command rejects a device it cannot run on before any work, as an
    argument error (status 2) that names ``--device``, the value given and what is wrong."""
    with pytest.raises(SystemExit) as raised:
        COMMANDS[command](["--device", value])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device:" in err
    assert repr(value) in err
    assert expected in err


@pytest.mark.parametrize(
    ("command", "argv", "expected"),
    [
        ("throughput", ["--steps", "1"], "--steps must be at least 2, got 1"),
        ("throughput", ["--image-size", "64"], "--image-size must be 28 or at least 176, got 64"),
        (
            "throughput",
            ["--cuda-graphs", "--steps", "11"],
            "--steps must be larger than 11 with --cuda-graphs, got 11",
        ),
        (
            "throughput",
            ["--cuda-graphs"],
            "argument --cuda-graphs: needs a CUDA --device, got --device 'cpu'",
        ),
        (
            "sweep",
            ["--cuda-graphs"],
            "argument --cuda-graphs: needs a CUDA --device, got --device 'cpu'",
        ),
        ("step0", ["--image-size", "100"], "--image-size must be at least 176 (MS-SSIM), got 100"),
        ("step0", ["--steps", "1"], "--steps must be at least 2, got 1"),
        ("step0", ["--image-size", "28"], "--image-size must be at least 176 (MS-SSIM), got 28"),
        (
            "step0",
            ["--distances", "l2", "lpips", "--image-size", "28"],
            "--image-size must be at least 31 (LPIPS), got 28",
        ),
    ],
)
def test_bad_sizes_exit_2(
    command: str, argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One step cannot exclude step 0, and the models (and MS-SSIM) need their image sizes:
    argument errors, with status 2 and the offending value."""
    with pytest.raises(SystemExit) as raised:
        COMMANDS[command](argv)
    assert raised.value.code == 2
    assert expected in capsys.readouterr().err


def test_step0_takes_small_images_for_the_distances_that_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only MS-SSIM (176 px), LPIPS (31) and SSIM (11) bound the image size: ``--distances l2``
    at 32 px runs (it was refused, naming MS-SSIM, which was not asked for)."""
    argv = ["--distances", "l2", "--batch-size", "1", "--image-size", "32", "--steps", "2",
            "--repeats", "1", "--threads", "1"]  # fmt: skip
    assert COMMANDS["step0"](argv) in (None, 0)
    assert "32 px" in capsys.readouterr().out


def test_device_argument_accepts_the_cpu() -> None:
    """``cpu`` is always accepted, as a ``torch.device`` (what the commands move tensors to)."""
    device = device_argument(argparse.ArgumentParser(), "cpu")
    assert isinstance(device, torch.device) and device == torch.device("cpu")


@NO_CUDA
def test_device_argument_without_cuda_is_a_parser_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Called directly, the check goes through ``parser.error``: status 2 and the parser's
    usage line, so every command's message looks the same."""
    parser = argparse.ArgumentParser(prog="bench-x")
    with pytest.raises(SystemExit) as raised:
        device_argument(parser, "cuda:0")
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: bench-x") and "'cuda:0' requested but CUDA" in err


def test_benchmarks_name_the_device_of_their_foolbox_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Foolbox's ``PyTorchModel`` without a device moves the model to CUDA in place when CUDA
    is present: on a GPU machine the SSIM border benchmark and the DDN check of the training
    script then met CPU tensors. Here a missing device is an error."""
    import foolbox.models.pytorch as fb_pytorch

    from alma_plugin.bench import border, train_mnist

    def named_only(device: Any) -> torch.device:
        assert device is not None, "a Foolbox PyTorchModel was built without a device"
        return torch.device(device)

    monkeypatch.setattr(fb_pytorch, "get_device", named_only)
    torch.manual_seed(0)
    colour = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = colour(x).argmax(1).detach()
    assert border.run_attack("SSIM", "symmetric", colour, x, y, 2, [1]).seconds >= 0
    grey = _tiny_model()
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = grey(images).argmax(1).detach()
    assert train_mnist.ddn_median_l2(grey, images, labels, steps=2) >= 0


def test_every_foolbox_model_the_package_builds_names_its_device() -> None:
    """The static half of the test above, for code it does not run: every
    ``fb.PyTorchModel(...)`` call in the package passes ``device=``."""
    import ast
    from pathlib import Path

    import alma_plugin

    root = Path(alma_plugin.__file__).parent
    calls, unnamed = 0, []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "PyTorchModel":
                calls += 1
                if not any(keyword.arg == "device" for keyword in node.keywords):
                    unnamed.append(f"{path.relative_to(root)}:{node.lineno}")
    assert calls >= 5  # the registry's, the sweep's, the peers', border's, train_mnist's
    assert not unnamed, f"fb.PyTorchModel without device= at {unnamed}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--samples", "4", "--msssim-samples", "5"],
            "--msssim-samples: must be at most --samples",
        ),
        (["--msssim-samples", "30"], "--msssim-samples: must be at most --samples (20)"),
        (["--msssim-samples", "0"], "msssim-samples must be >= 1"),
    ],
)
def test_border_refuses_more_msssim_samples_than_samples(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: cut to --samples without a word (the help says "of those")."""
    from alma_plugin.bench import border

    with pytest.raises(SystemExit) as exit_info:
        border.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
