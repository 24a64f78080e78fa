"""The command-line options and argument checks every ``alma-bench`` command shares.

Each check fails through ``parser.error`` (or argparse's type errors): exit status 2, a message
naming the argument, the value and what was expected, before any model call or file write."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import usermodels

__all__ = [
    "MAX_BUDGET",
    "MAX_SEED",
    "BenchParser",
    "add_threads_option",
    "budget_option",
    "cuda_graphs_argument",
    "device_argument",
    "distinct_argument",
    "integer_option",
    "json_file_argument",
    "model_argument",
    "models_argument",
    "output_argument",
    "path_option",
    "real_option",
    "seed_option",
]

#: The largest seed: NumPy's and torch's generators take seeds below 2**63 (larger ones were an
#: OverflowError traceback after parsing).
MAX_SEED = 2**63 - 1
#: The largest step budget: far beyond any useful run, well within every attack's integers.
MAX_BUDGET = 10**7


class BenchParser(argparse.ArgumentParser):
    """argparse's parser, whose ``--help`` gives every option's default (options without help
    text included; not flags, nor a None default, which the command resolves): the parsers are
    the one source of the defaults docs/bench.md lists."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        shown = action.default not in (None, argparse.SUPPRESS) and action.nargs != 0
        if shown and action.option_strings and "default" not in (action.help or ""):
            default = action.default
            if isinstance(default, list | tuple):  # as typed on the command line
                default = " ".join(map(str, default))
            text = str(default).replace("%", "%%")
            action.help = f"{action.help} (default: {text})" if action.help else f"default: {text}"
        return action

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """As argparse's, but an option given twice is an error (argparse keeps the last
        value without a word: ``--models a --models b`` ran b alone)."""
        words = list(sys.argv[1:] if args is None else args)
        seen: set[str] = set()
        for word in words:
            if word == "--":
                break
            option = word.split("=", 1)[0]
            if option.startswith("-") and option in self._option_string_actions:
                action = self._option_string_actions[option]
                if action.dest in seen and not isinstance(action, argparse._AppendAction):
                    self.error(f"argument {'/'.join(action.option_strings)}: given twice; give "
                               "all its values once")  # fmt: skip
                seen.add(action.dest)
        return super().parse_known_args(words, namespace)


def integer_option(name: str, minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type of the benchmark commands: an integer >= ``minimum`` (default 1) and
    <= ``maximum`` (if given), with an error naming the option and the value (exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{name} must be <= {maximum}, got {value}")
        return value

    return parse


def seed_option() -> Callable[[str], int]:
    """The argparse type of ``--seed``: an integer in [0, :data:`MAX_SEED`]."""
    return integer_option("seed", 0, MAX_SEED)


def budget_option(name: str = "budget") -> Callable[[str], int]:
    """The argparse type of step budgets: an integer in [1, :data:`MAX_BUDGET`]."""
    return integer_option(name, 1, MAX_BUDGET)


def path_option(name: str) -> Callable[[str], Path]:
    """An argparse type: a non-empty path (``""`` would silently mean the current folder)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{name} must be a non-empty path, got {text!r}")
        return Path(text)

    return parse


def _writable(folder: Path) -> str | None:
    """None when a file can be created in the existing ``folder``, else why not (a temporary
    file is the only test that holds for root, read-only mounts and /proc alike)."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        return os.strerror(error.errno) if error.errno else str(error)
    return None


def output_argument(parser: argparse.ArgumentParser, option: str, folder: Path) -> Path:
    """An output folder, checked before any work: either an existing writable folder, or one
    that can be created (its nearest existing parent is a writable folder). Nothing is created
    here, so a later argument error leaves no empty folder behind."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is" if existing == folder else f"is under {str(existing)!r},"
        parser.error(f"argument {option}: expected a folder, got {str(folder)!r}, which {what} "
                     f"a file")  # fmt: skip
    reason = _writable(existing)
    if reason is not None:
        parser.error(f"argument {option}: cannot write into {str(existing)!r} to create "
                     f"{str(folder)!r}: {reason}")  # fmt: skip
    return folder


def json_file_argument(parser: argparse.ArgumentParser, option: str, path: Path) -> Path:
    """An output file, checked before any work: not a folder, in an existing writable folder."""
    if path.is_dir():
        parser.error(f"argument {option}: expected a file name, got the folder {str(path)!r}")
    parent = path.parent
    if not parent.is_dir():
        parser.error(f"argument {option}: the folder {str(parent)!r} of {str(path)!r} does "
                     f"not exist")  # fmt: skip
    reason = _writable(parent)
    if reason is not None:
        parser.error(f"argument {option}: cannot write into {str(parent)!r}: {reason}")
    return path


def distinct_argument(parser: argparse.ArgumentParser, option: str, values: Sequence) -> None:
    """Each value once: rows are keyed by (model, attack, budget), so two equal values would
    be pooled into one row (an argument error otherwise, naming the repeated values)."""
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        parser.error(f"argument {option}: each value once (rows of the table are keyed by "
                     f"them), got {repeated} more than once")  # fmt: skip


def models_argument(parser: argparse.ArgumentParser, models: Sequence[str]) -> None:
    """``--models``: each label once, and no two labels with the same file-system name (their
    result files and batch folders would overwrite each other)."""
    labels = [usermodels.model_label(m) for m in models]
    for label in dict.fromkeys(labels):
        given = [m for m, other in zip(models, labels, strict=True) if other == label]
        if len(set(given)) > 1:  # two files of the same name: say which
            parser.error(f"argument --models: {given} all get the label {label!r} (their "
                         f"rows and result files would be pooled); rename one")  # fmt: skip
    distinct_argument(parser, "--models", labels)
    seen: dict[str, str] = {}
    for label in labels:
        other = seen.setdefault(usermodels.safe_name(label), label)
        if other != label:
            parser.error(f"argument --models: {other!r} and {label!r} share the file name "
                         f"{usermodels.safe_name(label)!r} (their result files would overwrite "
                         f"each other); rename one")  # fmt: skip


def real_option(name: str, minimum: float = -math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``minimum`` (a NaN passes every comparison)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            bound = "" if minimum == -math.inf else f" >= {minimum:g}"
            raise argparse.ArgumentTypeError(f"{name} must be a finite number{bound}, got {text!r}")
        return value

    return parse


def add_threads_option(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--threads N`` (torch's CPU threads, N >= 1; default: torch's own), as every benchmark
    command spells it."""
    shown = "torch's" if default is None else str(default)
    parser.add_argument("--threads", type=integer_option("threads", 1), default=default,
                        help=f"torch CPU threads (default: {shown})")  # fmt: skip


def device_argument(parser: argparse.ArgumentParser, value: str) -> torch.device:
    """The ``--device`` of the benchmark commands: a torch device of type ``cpu`` or ``cuda``
    (``cuda:N``) that this machine has. Anything else is an argument error (``parser.error``:
    exit status 2, a message naming ``--device``, the value and what was expected)."""
    try:
        device = torch.device(value)
    except RuntimeError:
        parser.error(f"argument --device: expected a torch device such as 'cpu' or 'cuda:0', "
                     f"got {value!r}")  # fmt: skip
    if device.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: expected 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    if device.type == "cpu" and device.index is not None:  # torch ignores it: one CPU device
        parser.error(f"argument --device: expected 'cpu' without an index, got {value!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {value!r} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"argument --device: {value!r} requested but this machine has "
                     f"{torch.cuda.device_count()} CUDA device(s)")  # fmt: skip
    return device


def cuda_graphs_argument(
    parser: argparse.ArgumentParser, cuda_graphs: bool, device: torch.device
) -> bool:
    """``--cuda-graphs`` as given, checked against ``--device``: graphs need a CUDA device, so
    with another one it is an argument error (exit status 2, naming both arguments)."""
    if cuda_graphs and device.type != "cuda":
        parser.error(f"argument --cuda-graphs: needs a CUDA --device, got --device "
                     f"{str(device)!r}")  # fmt: skip
    return cuda_graphs


def model_argument(
    parser: argparse.ArgumentParser, name: str, model: torch.nn.Module, images: torch.Tensor,
    labels: torch.Tensor, data: str, data_option: str | None = "--data",
) -> None:  # fmt: skip
    """One ``--models`` entry, checked on the first of ``images`` before any attack: what
    every attack would otherwise fail on (or, worse, count as a success) after other models
    had run. The model runs on the data, returns finite logits (N, classes) differentiable in
    its input, does not write into that input (ALMA returns the tensor the model judged), and
    ``labels`` (the attacked samples') are among its classes. Else an argument error (exit
    status 2) naming ``--models`` (or ``data_option``), the model and what was expected;
    ``data_option`` None: the command has no option for its ``data``."""
    image = images[:1]
    source = f"{data_option} {data!r}" if data_option else f"the data {data!r}"
    probe = image.clone().requires_grad_(True)
    given = probe * 1  # not a leaf: an in-place write shows in its version counter
    try:
        logits = model(given)
        gradient = None
        if isinstance(logits, torch.Tensor) and logits.requires_grad:
            (gradient,) = torch.autograd.grad(logits.sum(), probe, allow_unused=True)
    except Exception as error:  # a user model that does not fit the data
        last = (str(error).strip().splitlines() or [type(error).__name__])[-1]  # TorchScript's
        parser.error(
            f"argument --models: {name!r} fails on one image of {source} of shape "
            f"{tuple(image.shape[1:])}: {last}"
        )
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits)
        parser.error(f"argument --models: {name!r} must return logits (N, classes), got {got}")
    if not bool(torch.isfinite(logits).all()):
        parser.error(
            f"argument --models: {name!r} returns non-finite logits (NaN or Inf) on the first "
            f"image of {source}: no attack can be measured on it"
        )
    if gradient is None:
        parser.error(f"argument --models: {name!r} returns logits that are not differentiable "
                     "in its input (torch.no_grad() or .detach() inside it?): the attacks need "
                     "their gradient")  # fmt: skip
    if given._version:
        parser.error(
            f"argument --models: {name!r} writes into its input tensor (e.g. "
            "nn.ReLU(inplace=True) as its first layer): make that layer out of place"
        )
    classes = logits.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        parser.error(f"argument {data_option or '--models'}: labels must lie in [0, {classes}) "
                     f"(the classes of {name!r}), got [{int(labels.min())}, "
                     f"{int(labels.max())}] in {source}")  # fmt: skip
