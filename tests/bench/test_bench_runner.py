"""Tests of the comparison runner ``python -m alma_plugin.bench`` (tiny budgets and samples)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alma_plugin.bench.__main__ import main
from alma_plugin.bench.counting import CountingModel
from alma_plugin.bench.distributed import Context, shard
from alma_plugin.bench.registry import ATTACKS, AttackSpec
from alma_plugin.bench.report import Record, format_table, merge, summarize
from alma_plugin.bench.runner import BenchConfig, plan, run_shard
from tests.utils import assert_unchanged, snapshot

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("attack", "budget", "success (%)", "median distance", "forwards / sample",
           "backwards / sample", "wall time (s)")  # fmt: skip


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _row(results: dict, attack: str) -> dict:
    (row,) = [r for r in results["summary"] if r["attack"] == attack]
    return row


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One small CLI run shared by the tests below: 4 samples, budget 10."""
    folder = tmp_path_factory.mktemp("bench")
    argv = ["--models", "mnist_regular", "--attacks", "alma-l2", "ddn-l2", "alma_prox-linf",
            "apgd-linf", "--budgets", "10", "--samples", "4", "--output", str(folder),
            "--quiet"]  # fmt: skip
    stdout = sys.stdout
    from io import StringIO

    sys.stdout = buffer = StringIO()
    try:
        assert main(argv) == 0
    finally:
        sys.stdout = stdout
    return folder, buffer.getvalue()


def test_cli_prints_the_table_with_the_papers_columns(cli_run: tuple[Path, str]) -> None:
    _, out = cli_run
    assert out.startswith("alma-bench ") and "seed 0" in out.splitlines()[0]
    (header,) = [line for line in out.splitlines() if line.startswith("| model |")]
    for column in COLUMNS:
        assert column in header
    assert "failures counted as +inf" in out and "count as distance 0" in out
    assert "Total wall time" in out
    # four runs and a best-of-all row for each of the two norms
    assert sum(line.startswith("| mnist_regular |") for line in out.splitlines()) == 6
    assert sum("| **best of all** |" in line for line in out.splitlines()) == 2
    for column in ("optimality", "wins", "sparsity l1/l2 median [IQR]"):
        assert column in header


def test_forwards_and_backwards_are_counted(cli_run: tuple[Path, str]) -> None:
    results = _results(cli_run[0])
    for attack in ("ALMA", "DDN", "ALMA prox"):  # one forward and one backward per step
        row = _row(results, attack)
        assert (row["forwards"], row["backwards"]) == (10.0, 10.0), attack
    apgd = _row(results, "APGD")  # clean checks and the binary search's forwards show up
    assert apgd["forwards"] > apgd["backwards"] > 0


def test_files_are_written(cli_run: tuple[Path, str]) -> None:
    folder, _ = cli_run
    with (folder / "distances.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 4
    assert {r["sample"] for r in rows} == {"0", "1", "2", "3"}
    results = _results(folder)
    assert {s["attack"] for s in results["samples"]} == {"alma-l2", "ddn-l2", "alma_prox-linf",
                                                        "apgd-linf"}  # fmt: skip
    assert (folder / "table.md").read_text().startswith("| model | attack |")
    for name in ("robust_accuracy_mnist_regular_l2", "robust_accuracy_mnist_regular_linf",
                 "patterns_mnist_regular"):  # fmt: skip
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_alma_succeeds_and_distances_are_consistent(cli_run: tuple[Path, str]) -> None:
    results = _results(cli_run[0])
    alma = _row(results, "ALMA")
    assert alma["success"] == 100.0 and 0 < alma["median"] < 10  # ℓ2 on MNIST images in [0, 1]
    (per_sample,) = [s for s in results["samples"] if s["attack"] == "alma-l2"]
    assert alma["median"] == pytest.approx(float(np.median(per_sample["distances"])))


def test_counting_model_counts_and_leaves_the_model_alone(mnist_cnn: torch.nn.Module) -> None:
    before = snapshot(mnist_cnn)
    counter = CountingModel(mnist_cnn)
    assert counter.training is False
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    out = counter(x)
    torch.autograd.grad(out[:, 0].sum(), x, retain_graph=True)
    torch.autograd.grad(out[:, 1].sum(), x)
    with torch.no_grad():
        counter(x[:2])
    assert (counter.forwards, counter.backwards) == (5, 6)
    assert_unchanged(mnist_cnn, before)


def _identity(model, x, y, budget, seed):  # type: ignore[no-untyped-def]
    return x.clone()


def test_conventions_failures_inf_and_misclassified_zero(tmp_path: Path) -> None:
    from alma_plugin.zoo import load_mnist_heldout, load_smallcnn

    images, labels = load_mnist_heldout()
    with torch.no_grad():
        predicted = load_smallcnn("mnist_regular")(images[:3]).argmax(1)
    wrong = (predicted[2] + 1) % 10  # sample 2 is misclassified by construction
    data = tmp_path / "data.npz"
    np.savez(data, images=(images[:3].numpy() * 255).round().astype(np.uint8),
             labels=np.array([predicted[0], predicted[1], wrong]))  # fmt: skip
    config = BenchConfig(models=("mnist_regular",), data=str(data), samples=3)
    spec = AttackSpec("none-l2", "identity", "l2", "test", _identity)
    (record,) = run_shard(config, Context(), [(spec, 7)])
    assert record.distances == [math.inf, math.inf, 0.0]
    (row,) = summarize([record])
    assert row.success == pytest.approx(100 / 3) and row.median == math.inf
    assert (row.forwards, row.backwards) == (0.0, 0.0)


def test_the_attack_is_timed_until_its_device_work_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the attack returns while its last kernels are still queued: the runner waits
    for the device (``runner.synchronize``) after the attack and before reading the clock."""
    from alma_plugin.bench import runner

    events: list[str] = []

    def attack(model, x, y, budget, seed):  # type: ignore[no-untyped-def]
        events.append("attack")
        return x

    monkeypatch.setattr(runner, "synchronize", lambda device: events.append(f"sync {device}"))
    monkeypatch.setattr(runner.time, "perf_counter", lambda: events.append("clock") or 0.0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    spec = AttackSpec("none-l2", "identity", "l2", "test", attack)
    runner.attack_batch(model, spec, 3, x, y, torch.zeros(2, dtype=torch.bool), 0)
    assert events == ["clock", "attack", "sync cpu", "clock"]


def test_cuda_graphs_reach_only_the_attacks_that_take_them() -> None:
    """``BenchConfig.cuda_graphs`` is passed as ``cuda_graphs=True`` to the specs that declare
    it (ALMA, ALMA prox) and to no other: the peers' run functions do not take it."""
    from alma_plugin.bench import runner

    seen: dict[str, dict] = {}

    def recording(key: str):  # type: ignore[no-untyped-def]
        def run(model, x, y, budget, seed, **options):  # type: ignore[no-untyped-def]
            seen[key] = options
            return x.clone()

        return run

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    wrong = torch.zeros(2, dtype=torch.bool)
    graphs = AttackSpec("g-l2", "G", "l2", "test", recording("g"), cuda_graphs=True)
    peer = AttackSpec("p-l2", "P", "l2", "test", recording("p"))
    for spec in (graphs, peer):
        runner.attack_batch(model, spec, 3, x, y, wrong, 0, cuda_graphs=True)
    assert seen == {"g": {"cuda_graphs": True}, "p": {}}
    runner.attack_batch(model, graphs, 3, x, y, wrong, 0)
    assert seen["g"] == {}


def test_the_registry_declares_cuda_graphs_for_alma_and_alma_prox_only() -> None:
    import inspect

    from alma_plugin.bench.sweep import alma_variant, prox_variant

    declared = {key for key, spec in ATTACKS.items() if spec.cuda_graphs}
    assert declared == {"alma-l1", "alma-l2", "alma_alg2-l1", "alma_alg2-l2", "alma_prox-linf"}
    variants = [alma_variant("paper", "l2", 2, "classes"), prox_variant(4), ATTACKS["alma-l1"]]
    for spec in variants:
        assert spec.cuda_graphs and "cuda_graphs" in inspect.signature(spec.run).parameters


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_algorithm_2_rows_are_the_published_gradient_and_alma_rows_the_default(norm: str) -> None:
    """``alma_alg2-<norm>`` is ALMA with ``smooth_max=0`` (Algorithm 2 as published) and
    ``alma-<norm>`` ALMA with its defaults (the distance's κ = 0.1): the same bits as ``alma()``
    called so, and not each other's."""
    from alma_plugin import alma
    from alma_plugin.zoo import load_mnist_heldout, load_smallcnn

    model = load_smallcnn("mnist_adversarial")
    images, labels = load_mnist_heldout()
    x, y = images[:6], labels[:6]
    with torch.no_grad():
        x, y = x[model(x).argmax(1) == y], y[model(x).argmax(1) == y]
    published = ATTACKS[f"alma_alg2-{norm}"].run(model, x, y, 20, 0)
    default = ATTACKS[f"alma-{norm}"].run(model, x, y, 20, 0)
    assert ATTACKS[f"alma_alg2-{norm}"].label == "ALMA (Algorithm 2)"
    assert torch.equal(
        published, alma(model, x, y, distance=norm, steps=20, smooth_max=0).adversarials
    )
    assert torch.equal(default, alma(model, x, y, distance=norm, steps=20).adversarials)
    assert not torch.equal(published, default)


def test_cuda_graphs_enter_the_batch_fingerprint_only_when_set() -> None:
    from alma_plugin.bench.resume import batch_fingerprint

    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    common = dict(model_hash="m", attack="alma-l2", budget=3, seed=0, device="cuda", images=x,
                  labels=y)  # fmt: skip
    plain = batch_fingerprint(**common)  # type: ignore[arg-type]
    assert batch_fingerprint(**common, cuda_graphs=False) == plain  # type: ignore[arg-type]
    assert batch_fingerprint(**common, cuda_graphs=True) != plain  # type: ignore[arg-type]


def test_cuda_graphs_without_a_cuda_device_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--cuda-graphs", "--samples", "2"])
    assert raised.value.code == 2
    assert "argument --cuda-graphs: needs a CUDA --device, got --device 'cpu'" in (
        capsys.readouterr().err
    )


def test_merge_and_summary_of_shards() -> None:
    def record(indices: list[int], distances: list[float], forwards: int, seconds: float):  # type: ignore[no-untyped-def]
        return Record("m", "a-l2", "A", "l2", 10, "10 steps", indices, distances, forwards,
                      forwards, seconds)  # fmt: skip

    merged = merge(
        [[record([2, 3], [3.0, math.inf], 20, 1.0)], [record([0, 1], [1.0, 0.0], 20, 2.0)]]
    )
    (m,) = merged
    assert m.indices == [0, 1, 2, 3] and m.distances == [1.0, 0.0, 3.0, math.inf]
    (row,) = summarize(merged)
    assert (row.success, row.median, row.forwards, row.seconds) == (75.0, 2.0, 10.0, 2.0)
    assert "| m | A | l2 | 10 | 75.0 | 2 | 1.000 | 2 | - | 10.0 | 10.0 | 2.0 | 10 steps |" in (
        format_table([row])
    )
    assert [shard(5, Context(r, 2)).tolist() for r in (0, 1)] == [[0, 1, 2], [3, 4]]


def test_default_plan() -> None:
    pairs, notes = plan(BenchConfig())
    budgets = {(spec.key, budget) for spec, budget in pairs}
    assert {("alma-l1", 100), ("alma-l1", 1000), ("alma-l2", 100), ("alma-l2", 1000)} <= budgets
    assert {("alma_alg2-l1", 100), ("alma_alg2-l2", 100)} <= budgets  # the paper's, beside
    assert ("alma_prox-linf", 100) in budgets and ("ddn-l2", 100) in budgets
    assert ("cw-l2", 100) in budgets and ("apgd-linf", 100) in budgets
    if ATTACKS["adv_lib_alma-l2"].unavailable():
        assert any("adv_lib" in note for note in notes)
    only_linf = plan(BenchConfig(distances=("linf",), budgets=(5,)))[0]
    assert {spec.norm for spec, _ in only_linf} == {"linf"}
    assert all(budget == 5 for _, budget in only_linf)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--samples", "0"], "samples must be >= 1, got 0"),
        (["--samples", "5000"], "--samples: at most 1000"),
        (["--budgets", "-3"], "budget must be >= 1, got -3"),
        (["--budgets", "ten"], "budget must be an integer, got 'ten'"),
        (["--attacks", "alma-l3"], "invalid choice: 'alma-l3'"),
        (["--distance", "l3"], "invalid choice: 'l3'"),
        (["--models", "resnet"], "--models: model must be one of"),
        (["--data", "missing.npz"], "--data: data must be 'mnist_heldout' or an .npz file"),
        (["--device", "gpu0"], "--device: expected a torch device"),
        (["--seed", "-1"], "seed must be >= 0, got -1"),
        (["--attacks", "ddn-l2", "--distance", "l1"], "no attack left to run"),
    ],
)
def test_argument_errors_are_clear(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    assert expected in capsys.readouterr().err


def test_two_gloo_processes_gather_all_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    options = ["--models", "mnist_regular", "--attacks", "alma-l2", "--budgets", "5",
               "--samples", "5", "--batch-size", "2", "--quiet", "--no-plots"]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "alma_plugin.bench", *options, "--output",
               str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Total wall time") == 1  # only rank 0 reports
    results = _results(tmp_path / "two")
    assert results["settings"]["processes"] == 2
    (per_sample,) = results["samples"]
    assert per_sample["indices"] == [0, 1, 2, 3, 4]
    row = _row(results, "ALMA")
    assert (row["samples"], row["forwards"], row["backwards"]) == (5, 5.0, 5.0)
    # Both ranks wrote their batches (rank 0: samples 0-3, rank 1: sample 4), the same files
    # and results as one process.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*options, "--output", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(previous)
    capsys.readouterr()

    def files(folder: Path) -> list[str]:
        return sorted(p.name for p in (folder / "batches").rglob("*.json"))

    assert files(tmp_path / "two") == files(tmp_path / "one") == [
        "000000-000001.json", "000002-000003.json", "000004-000004.json"]  # fmt: skip
    csv_two = (tmp_path / "two" / "distances.csv").read_text()
    assert csv_two == (tmp_path / "one" / "distances.csv").read_text()
