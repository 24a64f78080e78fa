"""The budget sweep (``python -m alma_plugin.bench.sweep``): its summary, table, plot and CLI."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from alma_plugin.bench import sweep
from alma_plugin.bench.report import Record

INF = math.inf


def _record(attack: str, budget: int, distances: list[float], norm: str = "l2") -> Record:
    n = len(distances)
    return Record("m", attack, attack.upper(), norm, budget, f"{budget} steps", list(range(n)),
                  distances, budget * n, budget * n, 1.0)  # fmt: skip


def test_summary_uses_one_reference_per_model_and_norm() -> None:
    records = [
        _record("a", 10, [1.0, 2.0, INF, 0.0]),
        _record("a", 100, [0.5, 1.0, 3.0, 0.0]),  # the best of all on every sample
        _record("b", 10, [0.5, 1.5, 3.0, 0.0]),
    ]
    rows = sweep.summarize(records)
    by = {(row["attack"], row["budget"]): row for row in rows}
    assert by[("a", 100)]["optimality"] == 1.0
    assert by[("a", 10)]["optimality"] < by[("b", 10)]["optimality"] < 1.0
    assert by[("a", 10)]["success"] == 75.0
    assert by[("a", 10)]["median"] == 1.5  # failures count as +inf, clean errors as 0
    assert by[("a", 100)]["forwards"] == 100.0


def test_table_has_a_column_per_budget(tmp_path) -> None:
    rows = sweep.summarize([_record("a", 10, [1.0, 2.0]), _record("a", 50, [0.5, INF]),
                            _record("b", 10, [1.0, 1.0])])  # fmt: skip
    table = sweep.format_tables(rows)
    assert "| attack | 10 | 50 |" in table
    assert "50%" in table  # success below 100 % is shown
    assert len(sweep.plot(rows, tmp_path)) == 1
    assert (tmp_path / "sweep_m.png").stat().st_size > 0


def test_variant_specs() -> None:
    spec = sweep.alma_variant("exponential", "l2")
    assert spec.key == "alma_exponential-l2" and spec.norm == "l2"
    assert set(sweep.ALMA_VARIANTS) == {"paper", "exponential", "cosine"}
    with pytest.raises(ValueError, match="variant"):
        sweep.alma_variant("fast", "l2")
    with pytest.raises(ValueError, match="norm"):
        sweep.alma_variant("paper", "linf")
    spec = sweep.alma_variant("paper", "l1", restarts=2)
    assert (spec.key, spec.label) == ("alma_paper_r2-l1", "ALMA (paper schedule, R = 2)")
    assert sweep.prox_variant(1).key == "alma_prox-linf"
    spec = sweep.prox_variant(4)
    assert (spec.key, spec.label, spec.norm) == ("alma_prox_r4-linf", "ALMA prox (R = 4)", "linf")
    spec = sweep.alma_variant("paper", "l2", restarts=2, mode="classes")
    assert (spec.key, spec.label) == ("alma_paper_r2c-l2", "ALMA (paper schedule, R = 2 classes)")
    spec = sweep.prox_variant(4, "classes")
    assert (spec.key, spec.label) == ("alma_prox_r4c-linf", "ALMA prox (R = 4 classes)")
    assert sweep.prox_variant(1, "classes").key == "alma_prox-linf"
    spec = sweep.prox_variant(1, smooth_max=0.1)
    assert (spec.key, spec.label) == ("alma_prox_k0.1-linf", "ALMA prox (κ = 0.1)")
    spec = sweep.prox_variant(1, smooth_max=0.0)
    assert (spec.key, spec.label) == ("alma_prox_k0-linf", "ALMA prox (κ = 0)")
    spec = sweep.alma_variant("paper", "l1", smooth_max=0.1)
    assert (spec.key, spec.label) == ("alma_paper_k0.1-l1", "ALMA (paper schedule, κ = 0.1)")
    spec = sweep.alma_variant("cosine", "l2", 2, "classes", 0.3)
    assert (spec.key, spec.label) == (
        "alma_cosine_r2c_k0.3-l2",
        "ALMA (cosine schedule, R = 2 classes, κ = 0.3)",
    )
    spec = sweep.prox_variant(2, "classes", 0.25)
    assert (spec.key, spec.label) == (
        "alma_prox_r2c_k0.25-linf",
        "ALMA prox (R = 2 classes, κ = 0.25)",
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samples", "0"], "--samples"),
        (["--budgets", "0"], "--budgets"),
        (["--peers", "nope-l2"], "--peers"),
        (["--samples", "5000"], "--samples"),
        (["--restarts", "0"], "--restarts"),
        (["--budgets", "2", "10", "--restarts", "3"], "--restarts"),
        (["--restart-mode", "targets"], "--restart-mode"),
        (["--smooth-max", "-0.1"], "--smooth-max"),
        (["--smooth-max", "none"], "--smooth-max"),
        (["--smooth-max", "inf"], "--smooth-max"),
        (["--smooth-max", "abc"], "--smooth-max"),
        (["--smooth-max", "0.1", "0.1"], "--smooth-max"),
        (["--first-run-share", "1"], "--first-run-share"),
        (["--first-run-share", "0"], "--first-run-share"),
        (["--first-run-share", "nan"], "--first-run-share"),
        (["--first-run-share", "0.7", "0.8"], "unrecognized arguments"),
        # options of R > 1 runs without one were dropped silently (the default's share: 0.7)
        (["--first-run-share", "0.5"], "--first-run-share: applies to --restarts R with R > 1"),
        (["--restart-mode", "classes"], "--restart-mode: applies to --restarts R with R > 1"),
        (["--restarts", "1", "--first-run-share", "0.5"], "--first-run-share: applies"),
    ],
)
def test_argument_errors_exit_2(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        sweep.main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def _run_rows(out, *argv: str) -> list[dict[str, str]]:
    """Run a tiny sweep on mnist_regular (2 samples, 1 thread, quiet) into ``out``; its CSV
    rows."""
    common = ["--models", "mnist_regular", "--samples", "2", "--threads", "1", "--output",
              str(out), "--quiet"]  # fmt: skip
    assert sweep.main([*common, *argv]) == 0
    with (out / "sweep.csv").open() as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_csv_table_and_plot(tmp_path) -> None:
    out = tmp_path / "out"
    rows = _run_rows(out, "--variants", "paper", "exponential", "--peers", "--distance", "l2",
                     "--budgets", "2", "4")  # fmt: skip
    assert {(r["attack"], r["budget"]) for r in rows} == {
        (f"alma_{v}-l2", b) for v in ("paper", "exponential") for b in ("2", "4")
    }
    assert all(float(r["forwards"]) == float(r["budget"]) for r in rows)  # counted, 1 per step
    assert "ALMA (paper schedule)" in (out / "sweep.md").read_text()
    assert (out / "sweep_mnist_regular.png").exists()


def test_restarts_run_once_per_r_with_the_budget_counted(tmp_path) -> None:
    """``--restarts 1 2``: ALMA and ALMA prox once per R, each still one forward and one
    backward per step; R = 2 is a different attack (its distances differ). ALMA's R = 1 is
    keyed ``_r1`` (its default is the class restarts); ALMA prox's default is one run."""
    rows = _run_rows(tmp_path / "out", "--variants", "paper", "--peers", "alma_prox-linf",
                     "--distance", "l1", "linf", "--budgets", "6", "--restarts", "1", "2",
                     "--no-plots")  # fmt: skip
    assert {r["attack"] for r in rows} == {"alma_paper_r1-l1", "alma_paper_r2-l1",
                                           "alma_prox-linf", "alma_prox_r2-linf"}  # fmt: skip
    assert all(float(r["forwards"]) == float(r["backwards"]) == 6 for r in rows)


def test_class_restarts_run_through_the_sweep(tmp_path) -> None:
    """``--restart-mode classes``: the R > 1 runs aim at the next classes (keys ``_r<R>c``),
    still one forward and one backward per step."""
    rows = _run_rows(tmp_path / "out", "--variants", "paper", "--peers", "alma_prox-linf",
                     "--distance", "l2", "linf", "--budgets", "6", "--restarts", "1", "3",
                     "--restart-mode", "classes", "--no-plots")  # fmt: skip
    assert {r["attack"] for r in rows} == {"alma_paper_r1-l2", "alma_paper_r3c-l2",
                                           "alma_prox-linf", "alma_prox_r3c-linf"}  # fmt: skip
    assert all(float(r["forwards"]) == float(r["backwards"]) == 6 for r in rows)


def test_first_run_share_gives_run_zero_its_share(tmp_path) -> None:
    """``--first-run-share 0.7``: the R > 1 runs of ALMA and ALMA prox with run 0 at 70 % of
    each budget (keys ``_r<R>c_p0.7``; R = 1 has no share: ``_r1``), still one
    forward and one backward per step, and the same attack as the class with
    ``first_run_share=0.7`` (its median)."""
    rows = _run_rows(tmp_path / "out", "--variants", "paper", "--peers", "alma_prox-linf",
                     "--distance", "l1", "linf", "--budgets", "10", "--restarts", "1", "2",
                     "--restart-mode", "classes", "--first-run-share", "0.7",
                     "--no-plots")  # fmt: skip
    median = {r["attack"]: r["median"] for r in rows}
    assert set(median) == {"alma_paper_r1-l1", "alma_paper_r2c_p0.7-l1", "alma_prox-linf",
                           "alma_prox_r2c_p0.7-linf"}  # fmt: skip
    assert all(float(r["forwards"]) == float(r["backwards"]) == 10 for r in rows)
    import foolbox as fb

    from alma_plugin.foolbox import L1ALMA
    from alma_plugin.zoo import load_mnist_heldout, load_smallcnn

    model = load_smallcnn("mnist_regular")
    images, labels = load_mnist_heldout()
    attack = L1ALMA(steps=10, seed=0, restarts=2, restart_mode="classes", first_run_share=0.7)
    with torch.no_grad():
        clean = model(images[:2]).argmax(1) == labels[:2]
    adversarials = attack.run(fb.PyTorchModel(model, bounds=(0, 1)), images[:2], labels[:2])
    norms = (adversarials - images[:2]).flatten(1).norm(p=1, dim=1).where(clean, 0)
    expected = norms.double().quantile(0.5).item()  # the report's median: the mean of two
    assert float(median["alma_paper_r2c_p0.7-l1"]) == pytest.approx(expected, rel=1e-5)


def test_default_restarts_are_the_class_restarts_from_100_steps(tmp_path) -> None:
    """``--restarts default 1`` (no ``--restarts``: default only): ALMA's default is two runs
    aimed at classes, run 0 at 70 % (``alma_paper-l1``: ``L1ALMA()``'s median, not that of one
    run, ``alma_paper_r1-l1``) from 100 steps, one run below (the two keys agree at 50)."""
    rows = _run_rows(tmp_path / "out", "--variants", "paper", "--peers", "--distance", "l1",
                     "--budgets", "50", "100", "--restarts", "default", "1",
                     "--no-plots")  # fmt: skip
    median = {(r["attack"], r["budget"]): float(r["median"]) for r in rows}
    assert set(median) == {(a, b) for a in ("alma_paper-l1", "alma_paper_r1-l1")
                           for b in ("50", "100")}  # fmt: skip
    assert median["alma_paper-l1", "50"] == median["alma_paper_r1-l1", "50"]
    assert median["alma_paper-l1", "100"] != median["alma_paper_r1-l1", "100"]
    import foolbox as fb

    from alma_plugin.foolbox import L1ALMA
    from alma_plugin.zoo import load_mnist_heldout, load_smallcnn

    model = load_smallcnn("mnist_regular")
    images, labels = load_mnist_heldout()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    adversarials = L1ALMA(steps=100).run(fmodel, images[:2], labels[:2])
    with torch.no_grad():
        clean = model(images[:2]).argmax(1) == labels[:2]
    norms = (adversarials - images[:2]).flatten(1).norm(p=1, dim=1).where(clean, 0)
    expected = norms.double().quantile(0.5).item()
    assert median["alma_paper-l1", "100"] == pytest.approx(expected, rel=1e-5)


def test_smooth_max_runs_alma_and_alma_prox_once_per_kappa(tmp_path) -> None:
    """``--smooth-max default 0 0.1``: ALMA and ALMA prox with their default κ (ALMA's ℓ1:
    ``DISTANCES["l1"].smooth_max``; ALMA prox: ``PROX_SMOOTH_MAX``'s, both 0.1), with the
    papers' gradient and with κ = 0.1 (``ALMAParams`` / ``ProxParams.smooth_max``), each one
    forward and one backward per step. The default is κ = 0.1 (the same medians) for both."""
    rows = _run_rows(tmp_path / "out", "--variants", "paper", "--peers", "alma_prox-linf",
                     "--distance", "l1", "linf", "--budgets", "6", "--smooth-max", "default",
                     "0", "0.1", "--no-plots")  # fmt: skip
    median = {r["attack"]: r["median"] for r in rows}
    assert set(median) == {f"{a}{k}-{n}" for a, n in (("alma_paper", "l1"), ("alma_prox", "linf"))
                           for k in ("", "_k0", "_k0.1")}  # fmt: skip
    assert all(float(r["forwards"]) == float(r["backwards"]) == 6 for r in rows)
    assert median["alma_paper-l1"] == median["alma_paper_k0.1-l1"]
    assert median["alma_prox-linf"] == median["alma_prox_k0.1-linf"]
