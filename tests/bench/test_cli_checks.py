"""Argument checks of ``alma-bench`` and its subcommands: every bad value is exit status 2 with
a message naming the argument, before any work (these were tracebacks after work was done, or
silently accepted); and the conventions of the files they write."""

from __future__ import annotations

import importlib.util
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from alma_plugin.bench import __main__ as cli
from alma_plugin.bench import report, resume, runner, sweep, unseen
from alma_plugin.bench.registry import ATTACKS
from alma_plugin.bench.report import Record, summarize
from alma_plugin.bench.runner import BenchConfig, plan
from alma_plugin.zoo.models import MODEL_NAMES

FACTORIES = textwrap.dedent(
    """
    from torch import nn

    def good():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def raises():
        raise RuntimeError("boom in the factory")

    def needs_an_argument(width):
        return good()

    def returns_nan():
        return nn.Sequential(good(), Scale(float("nan")))

    def not_differentiable():
        return Detached(good())

    def writes_into_its_input():
        return nn.Sequential(nn.ReLU(inplace=True), good())

    def five_classes():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))

    class Scale(nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return x * self.factor

    class Detached(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).detach()
    """
)


@pytest.fixture(autouse=True)
def _no_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument errors must come before any attack runs: running one fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an attack ran before the arguments were checked")

    for module in (runner, cli, sweep):
        monkeypatch.setattr(module, "run_shard", refuse)


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of ``alma-bench argv``, which must exit with status 2."""
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


TINY = ["--models", "mnist_regular", "--attacks", "alma-l2", "--budgets", "2", "--samples", "2"]


# --- 1. output paths --------------------------------------------------------------------------


def test_a_bad_output_folder_is_an_argument_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "a_file"
    afile.write_text("")
    err = _error([*TINY, "--output", str(afile)], capsys)
    assert "argument --output: expected a folder" in err and "is a file" in err, err
    err = _error([*TINY, "--output", str(afile / "sub")], capsys)
    assert "argument --output: expected a folder" in err, err
    err = _error([*TINY, "--output", ""], capsys)
    assert "argument --output: output must be a non-empty path, got ''" in err, err
    err = _error(["sweep", "--output", str(afile), "--samples", "2"], capsys)
    assert "alma-bench sweep: error: argument --output: expected a folder" in err, err
    err = _error(["sweep", "--output", "", "--samples", "2"], capsys)
    assert "argument --output: output must be a non-empty path" in err, err
    assert not (tmp_path / "sub").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_unwritable_output_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    """/proc refuses new files even to root (a permission check would pass there)."""
    err = _error([*TINY, "--output", "/proc/alma_bench_forbidden"], capsys)
    assert "argument --output: cannot write into '/proc'" in err, err
    err = _error(["sweep", "--output", "/proc/alma_bench_forbidden", "--samples", "2"], capsys)
    assert "argument --output: cannot write into '/proc'" in err, err


def test_a_bad_unseen_json_is_an_argument_error_before_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(unseen, "compare", lambda *a, **k: pytest.fail("the benchmark ran"))
    err = _error(["unseen", "--samples", "2", "--json", str(tmp_path / "nope" / "x.json")], capsys)
    assert "alma-bench unseen: error: argument --json: the folder" in err, err
    assert "does not exist" in err
    err = _error(["unseen", "--samples", "2", "--json", str(tmp_path)], capsys)
    assert "argument --json: expected a file name, got the folder" in err, err
    err = _error(["unseen", "--samples", "2", "--json", ""], capsys)
    assert "argument --json: json must be a non-empty path" in err, err


# --- 2. models and data that cannot be loaded -------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("state_dict", "expected a TorchScript file (torch.jit.save), cannot load it: "
                       "RuntimeError: PytorchStreamReader"),
        ("text", "expected a TorchScript file (torch.jit.save), cannot load it: RuntimeError"),
        ("raises", "raises() must run without arguments and return a torch.nn.Module, but it "
                   "raised RuntimeError: boom in the factory"),
        ("needs_an_argument", "needs_an_argument() must run without arguments and return a "
                              "torch.nn.Module, but it raised TypeError"),
        # these were a traceback (or a 100 % success row at distance 0, for NaN logits) after
        # every earlier model had run
        ("returns_nan", "returns non-finite logits (NaN or Inf) on the first image"),
        ("not_differentiable", "returns logits that are not differentiable in its input"),
        ("writes_into_its_input", "writes into its input tensor"),
    ],
)  # fmt: skip
def test_a_model_that_cannot_be_loaded_is_an_argument_error(
    kind: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "state_dict":
        spec = str(tmp_path / "weights.pt")
        torch.save(torch.nn.Linear(784, 10).state_dict(), spec)
    elif kind == "text":
        spec = str(tmp_path / "README.md")
        Path(spec).write_text("# not a model\n")
    else:
        (tmp_path / "factories.py").write_text(FACTORIES)
        spec = f"{tmp_path / 'factories.py'}:{kind}"
    err = _error(["--models", spec, "--attacks", "alma-l2", "--budgets", "2"], capsys)
    assert "argument --models: " in err and expected in err, err


def test_a_npy_file_is_an_argument_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((2, 1, 28, 28), np.float32))
    err = _error(["--data", str(path), "--samples", "2"], capsys)
    assert "argument --data: " in err and "expected an .npz file" in err, err
    assert "got a single ndarray (a .npy file)" in err


# --- 3. --budgets without --attacks -----------------------------------------------------------


def test_budgets_without_attacks_keep_the_default_attack_list() -> None:
    default = {spec.key for spec, _ in plan(BenchConfig())[0]}
    pairs = plan(BenchConfig(budgets=(3, 7)))[0]
    assert {spec.key for spec, _ in pairs} == default
    assert {"fab-l2", "fab-linf", "deepfool-l2", "fmn_stock-l2"}.isdisjoint(default)
    assert sorted(budget for spec, budget in pairs if spec.key == "ddn-l2") == [3, 7]
    # Chosen explicitly, they run at the given budgets.
    (pair,) = plan(BenchConfig(attacks=("deepfool-l2",), budgets=(3,)))[0]
    assert (pair[0].key, pair[1]) == ("deepfool-l2", 3)


# --- 4. sweep: each value once, something to run ----------------------------------------------

SWEEP = ["sweep", "--models", "mnist_regular", "--samples", "2", "--budgets", "2"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--budgets", "2", "2"], "argument --budgets: each value once"),
        (["--models", "mnist_regular", "mnist_regular"], "argument --models: each value once"),
        (["--variants", "paper", "paper"], "argument --variants: each value once"),
        (["--peers", "ddn-l2", "ddn-l2"], "argument --peers: each value once"),
        (["--variants", "--peers"], "no attack left to run"),
        (["--variants", "--peers", "ddn-l2", "--distance", "linf"], "no attack left to run"),
    ],
)
def test_sweep_refuses_repeated_values_and_empty_selections(
    extra: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = {word for word in extra if word.startswith("--")}  # instead of SWEEP's own
    base = [w for i, w in enumerate(SWEEP) if w not in given and SWEEP[i - 1] not in given]
    err = _error([*base, *extra], capsys)
    assert f"alma-bench sweep: error: argument{'s' if 'left' in expected else ''}" in err, err
    assert expected in err, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--attacks", "cw-l2", "--budgets", "8"], "cw-l2 spends a budget as 9 x 1 steps"),
        (
            ["--attacks", "ead-l1", "alma-l1", "--budgets", "100", "3"],
            "ead-l1 spends a budget as 9 x 1 steps (binary search on c), so it needs at least 9, "
            "got 3",
        ),
        (["--attacks", "apgd-linf", "--budgets", "9"], "apgd-linf spends a budget as 5 x (1 + 1)"),
        (
            ["sweep", "--peers", "apgd-l2", "--variants", "--budgets", "9", "50"],
            "apgd-l2 spends a budget as 5 x (1 + 1) gradients (binary search on eps), so it needs "
            "at least 10, got 9",
        ),  # fmt: skip
        (["noise", "--attacks", "cw-l2", "--budgets", "5"], "cw-l2 spends a budget as 9 x 1"),
    ],
)
def test_budgets_an_attack_cannot_split_are_refused(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """C&W and EAD split a budget over 9 binary-search steps, APGD over 5 searches of an
    iteration and its starting gradient: below 9 and 10 they spent more than the budget while
    the table said the budget (C&W at 3: 9 backwards per sample)."""
    err = _error([*argv, "--samples", "2"], capsys)
    assert f"error: argument --budgets: {expected}" in err, err


def test_the_smallest_splittable_budgets_are_spent_exactly() -> None:
    from alma_plugin.bench.registry import ATTACKS

    for key, smallest in (("cw-l2", 9), ("ead-l1", 9), ("apgd-l2", 10), ("apgd-linf", 10)):
        assert ATTACKS[key].min_budget == smallest
        assert ATTACKS[key].check_budget(smallest) is None
    assert all(spec.check_budget(1) is None for key, spec in ATTACKS.items()
               if key.split("-")[0] not in ("cw", "ead", "apgd"))  # fmt: skip


# --- 5. seeds and budgets too large for the generators ----------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*TINY, "--seed", str(2**63)], "argument --seed: seed must be <= 9223372036854775807"),
        (["--budgets", str(2**64)], "argument --budgets: budget must be <= 10000000"),
        (["sweep", "--seed", str(2**64)], "argument --seed: seed must be <="),
        (["sweep", "--budgets", str(2**64)], "argument --budgets: budget must be <="),
        (["noise", "--seed", str(2**64)], "argument --seed: seed must be <="),
        (["noise", "--budgets", str(2**64)], "argument --budgets: budgets must be <="),
        (["unseen", "--seed", str(2**64)], "argument --seed: seed must be <="),
        (["unseen", "--steps", str(2**64)], "argument --steps: steps must be <="),
    ],
)
def test_huge_seeds_and_budgets_are_argument_errors(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in _error(argv, capsys)


def test_the_largest_seed_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config, _ = cli.parse_args([*TINY, "--seed", str(2**63 - 1), "--output", str(out)])
    assert config.seed == 2**63 - 1
    assert not out.exists()  # checked, not created, while parsing


@pytest.mark.parametrize("spelling", ["--distance", "--distances"])
def test_distance_and_distances_are_one_option(spelling: str, tmp_path: Path) -> None:
    """The main command and ``sweep`` take both spellings; docs/bench.md documents the
    alias."""
    config, _ = cli.parse_args(["--attacks", "alma-l2", "alma_prox-linf", spelling, "linf",
                                "--output", str(tmp_path / "out")])  # fmt: skip
    assert config.distances == ("linf",)
    assert sweep._parser().parse_args([spelling, "l1", "linf"]).distance == ["l1", "linf"]


@pytest.mark.parametrize("module", ["reeval", "step0", "throughput"])
def test_every_list_of_distances_takes_both_spellings(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: ``reeval``, ``step0`` and ``throughput`` refused ``--distance``."""
    import importlib

    main = importlib.import_module(f"alma_plugin.bench.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--distances" in text and "--distance {" in text


# --- 6. two models, one file name -------------------------------------------------------------


def test_models_with_the_same_file_name_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "um.py").write_text(FACTORIES)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    torch.jit.save(scripted, str(tmp_path / "um_good.pt"))
    err = _error(["--models", f"{tmp_path / 'um.py'}:good", str(tmp_path / "um_good.pt")], capsys)
    assert "argument --models: 'um:good' and 'um_good' share the file name 'um_good'" in err, err


# --- 7. strict JSON -----------------------------------------------------------------------------


def _strict(text: str) -> object:
    """``json.loads`` that refuses the bare ``Infinity`` / ``NaN`` of Python's json module."""

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_unseen_json_is_strict_with_inf_as_in_results_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    row = unseen.Row("m", 1.0, {name: 0.5 for name in unseen.TRAINING + unseen.UNSEEN},
                     {"linf": 0.1, "l1": math.inf, "l2": math.nan, "ssim": 0.0})  # fmt: skip
    monkeypatch.setattr(unseen, "compare", lambda *a, **k: [row])
    out = tmp_path / "rows.json"
    assert unseen.main(["--samples", "2", "--models", "mnist_regular", "--json", str(out)]) == 0
    payload = _strict(out.read_text())
    assert isinstance(payload, dict)
    assert payload["rows"][0]["median"] == {"linf": 0.1, "l1": "inf", "l2": None, "ssim": 0.0}
    assert report.to_json([math.inf, -math.inf, math.nan, 1.5]) == ["inf", "-inf", None, 1.5]


def test_batch_files_are_strict_json_and_old_ones_are_read_back(tmp_path: Path) -> None:
    store = resume.BatchStore(tmp_path, resume=True)
    record = Record("m", "a-l2", "A", "l2", 5, "5 steps", [0, 1, 2], [0.5, math.inf, 0.0],
                    3, 3, 0.1, [1.5, math.nan, math.nan], [1, 2])  # fmt: skip
    path = tmp_path / "new.json"
    store.save(path, "f", record)
    assert _strict(path.read_text())
    back = store.load(path, "f")
    assert back is not None and back.distances == [0.5, math.inf, 0.0]
    assert back.sparsity[0] == 1.5 and math.isnan(back.sparsity[1])
    old = tmp_path / "old.json"  # as written before: bare Infinity / NaN
    old.write_text(path.read_text().replace('"inf"', "Infinity").replace("null", "NaN"))
    back = store.load(old, "f")
    assert back is not None and back.distances == [0.5, math.inf, 0.0]


# --- 8. optimality when no run fooled any sample ----------------------------------------------


def test_best_of_all_is_nan_when_no_run_fooled_any_sample() -> None:
    records = [Record("m", key, key, "l2", 5, "", [0, 1], [math.inf, math.inf])
               for key in ("a-l2", "b-l2")]  # fmt: skip
    rows = summarize(records)
    assert [r.attack for r in rows] == ["a-l2", "b-l2", report.BEST_OF_ALL]
    assert all(math.isnan(r.optimality) for r in rows)
    # One success anywhere: the best of all scores 1 again.
    records[0].distances = [0.5, math.inf]
    assert summarize(records)[-1].optimality == 1.0


# --- 9. small slips ---------------------------------------------------------------------------


def test_help_and_docstrings_list_every_embedded_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    from alma_plugin.bench import usermodels

    for name in MODEL_NAMES:
        assert name in out and name in (usermodels.__doc__ or "")
    assert f"the first\n{runner.DEFAULT_SAMPLES} held-out images" in (cli.__doc__ or "")


@pytest.mark.parametrize("device", ["cpu:1", "cpu:0"])
def test_a_cpu_index_is_refused(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error([*TINY, "--device", device], capsys)
    assert f"argument --device: expected 'cpu' without an index, got {device!r}" in err, err


@pytest.mark.skipif(importlib.util.find_spec("adv_lib") is not None, reason="adv_lib installed")
def test_choosing_adv_lib_without_it_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert "adv_lib_alma-l2" in ATTACKS
    err = _error(["--attacks", "adv_lib_alma-l2", "--budgets", "2", "--samples", "2"], capsys)
    assert "no attack left to run" in err and "'adv_lib' package is not installed" in err, err


def test_training_the_lagrangian_model_alone_needs_the_regular_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train_mnist --models mnist_lagrangian`` warm-starts from the regular model: without
    its weights in ``--out`` it was NumPy's FileNotFoundError traceback, after loading MNIST."""
    from alma_plugin.bench import train_mnist

    with pytest.raises(SystemExit) as exit_info:
        train_mnist.main(["--models", "mnist_lagrangian", "--out", str(tmp_path),
                          "--data-dir", str(tmp_path / "no-mnist-here")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "smallcnn_mnist_regular" in capsys.readouterr().err


def test_an_option_given_twice_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse kept the last value without a word: ``--models a --models b`` ran b alone."""
    err = _error(["--models", "mnist_regular", "--models", "mnist_adversarial"], capsys)
    assert "argument --models: given twice" in err, err
    err = _error(["sweep", "--samples", "4", "--samples=2"], capsys)
    assert "argument --samples: given twice" in err, err


def test_an_attack_without_default_budgets_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["--models", "mnist_regular", "--attacks", "fab-l2", "--samples", "2"], capsys)
    assert "fab-l2 has no default budget: give --budgets" in err, err


def test_factory_files_import_modules_beside_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A factory file importing a helper module of its folder failed with "No module named",
    even when run from that folder (a console script's sys.path has no working folder)."""
    from alma_plugin.bench.usermodels import load_model

    (tmp_path / "helper_net_for_test.py").write_text(FACTORIES)
    (tmp_path / "entry.py").write_text("from helper_net_for_test import good\n")
    monkeypatch.chdir(tmp_path.parent)
    assert isinstance(load_model(f"{tmp_path / 'entry.py'}:good"), torch.nn.Module)
    package = tmp_path / "pkg_for_cli_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    assert isinstance(load_model("pkg_for_cli_test.nets:good"), torch.nn.Module)


def test_a_mistyped_subcommand_names_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["sweeep", "--samples", "2"], capsys)  # was "unrecognized arguments: sweeep"
    assert "unknown subcommand 'sweeep' (did you mean 'sweep'?)" in err, err


def test_missing_files_are_named_as_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert "'nope.pt' (no such file)" in _error(["--models", "nope.pt"], capsys)
    assert "'nothere.npz' (no such file)" in _error(["--data", "nothere.npz"], capsys)


# --- 10. the audit of the subcommands: checks the main command had, and resumed batches -------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # sweep ran user models unchecked: NaN logits gave a table of 'inf (nan, 0%)' cells,
        # the others a traceback from inside the first attack
        (["sweep", "--models", "{dir}/factories.py:returns_nan"],
         "argument --models: '{dir}/factories.py:returns_nan' returns non-finite logits"),
        (["sweep", "--models", "{dir}/factories.py:not_differentiable"],
         "returns logits that are not differentiable in its input"),
        (["sweep", "--models", "{dir}/factories.py:writes_into_its_input"],
         "writes into its input tensor"),
        (["sweep", "--models", "{dir}/factories.py:five_classes"],
         "argument --models: labels must lie in [0, 5) (the classes of '{dir}/factories.py:"
         "five_classes'), got [6, 7] in the data 'mnist_heldout'"),
        # --mean/--std normalise non-embedded models only: with embedded ones alone, ignored
        ([*TINY, "--mean", "0.5", "--std", "0.2"],
         "arguments --mean/--std: they normalise the inputs of non-embedded models only"),
        # noise: a value twice ran its rows twice
        (["noise", "--budgets", "2", "2"], "argument --budgets: each value once"),
        (["noise", "--attacks", "ddn-l2", "ddn-l2", "--budgets", "2"],
         "argument --attacks: each value once"),
        (["unseen", "--models", "mnist_regular", "mnist_regular"],
         "argument --models: each value once"),
        # two TorchScript files of the same name in two folders: named by their paths
        (["--attacks", "alma-l2", "--budgets", "2", "--samples", "2", "--models",
          "{dir}/a/m.pt", "{dir}/b/m.pt"],
         "argument --models: ['{dir}/a/m.pt', '{dir}/b/m.pt'] all get the label 'm'"),
    ],
)  # fmt: skip
def test_subcommands_check_as_the_main_command(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "factories.py").write_text(FACTORIES)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.pt").write_bytes(b"")
    argv = [word.format(dir=tmp_path) for word in argv]
    small = {
        "sweep": ["--samples", "2", "--budgets", "10", "--output", str(tmp_path / "out")],
        "noise": ["--samples", "2", "--replicates", "2"],
        "unseen": ["--samples", "2", "--steps", "2", "--pgd-steps", "1", "--quiet"],
    }
    err = _error([*argv, *small.get(argv[0], [])], capsys)
    assert expected.format(dir=tmp_path) in err, err


@pytest.mark.skipif(importlib.util.find_spec("adv_lib") is not None, reason="adv_lib installed")
def test_noise_with_a_missing_library_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """It was ModuleNotFoundError from inside the first attack."""
    err = _error(["noise", "--attacks", "alma-l2", "adv_lib_alma-l2", "--samples", "2",
                  "--budgets", "2", "--replicates", "2"], capsys)  # fmt: skip
    assert "argument --attacks: adv_lib_alma-l2 needs the 'adv_lib' package" in err, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # each was a traceback, or (epochs <= 0) untrained weights saved without a word
        (["--threads", "0"], "argument --threads: threads must be >= 1, got 0"),
        (["--seed", "-1"], "argument --seed: seed must be >= 0, got -1"),
        (["--regular-epochs", "0"], "argument --regular-epochs: regular-epochs must be >= 1"),
        (["--lag-epochs", "-2"], "argument --lag-epochs: lag-epochs must be >= 1, got -2"),
        (["--eval-pgd-steps", "0"], "argument --eval-pgd-steps: eval-pgd-steps must be >= 1"),
        (["--adv-eps", "-0.1"], "argument --adv-eps: adv-eps must be a finite number >= 0"),
        (["--lag-init-lr", "0"], "arguments --lag-init-lr/--lag-multiplier: init_lr must"),
        ([], "argument --data-dir: expected the MNIST test set files "
             "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in"),
        (["--seed", "1", "--seed", "2"], "argument --seed: given twice"),
    ],
)  # fmt: skip
def test_train_mnist_checks_its_arguments(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alma_plugin.bench import train_mnist

    # no MNIST there: without the checks, a test fails at once instead of training for hours
    argv += ["--data-dir", str(tmp_path / "no-mnist-here"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        train_mnist.main(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda payload: [],  # valid JSON, not the file's shape: was AttributeError
        lambda payload: {**payload, "record": [1]},  # was AttributeError
        lambda payload: {**payload, "record": {**payload["record"], "distances": [0.5]}},
        lambda payload: {**payload, "record": {**payload["record"], "indices": [5, 6, 7]}},
        lambda payload: {**payload, "record": {**payload["record"], "sparsity": [1.0]}},
        lambda payload: {**payload, "record": {**payload["record"],
                                               "distances": [None, 0.5, 1.0]}},
    ],
    ids=["list", "record-list", "short-distances", "other-samples", "short-sparsity", "nan"],
)  # fmt: skip
def test_a_batch_file_of_another_shape_is_recomputed(corrupt: object, tmp_path: Path) -> None:
    """A batch file with the right fingerprint but a record that is not one distance per
    sample of its batch was a traceback (AttributeError, or an IndexError or NaN error in the
    table) or, for other sample positions, rows labelled with the wrong samples."""
    store = resume.BatchStore(tmp_path, resume=True)
    record = Record("m", "a-l2", "A", "l2", 5, "5 steps", [0, 1, 2], [0.5, math.inf, 0.0],
                    3, 3, 0.1, [1.5, math.nan, math.nan], [1, 2])  # fmt: skip
    path = tmp_path / "000000-000002.json"
    store.save(path, "f", record)
    assert store.load(path, "f", [0, 1, 2]) is not None
    payload = json.loads(path.read_text())
    path.write_text(json.dumps(corrupt(payload)))  # type: ignore[operator]
    assert store.load(path, "f", [0, 1, 2]) is None


def test_unseen_names_its_samples_argument(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["unseen", "--samples", "2000"], capsys)
    assert "alma-bench unseen: error: argument --samples: must lie in [1, 1000], got 2000" in err
