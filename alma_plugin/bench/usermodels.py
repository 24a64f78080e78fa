"""The models ``alma-bench --models`` accepts: embedded names, TorchScript files and factories.

A model spec is one of

- an embedded model name (:data:`alma_plugin.zoo.models.MODEL_NAMES`: ``mnist_regular``,
  ``mnist_adversarial``, ``mnist_lagrangian``);
- a TorchScript file (``model.pt``, saved with ``torch.jit.save``);
- ``path/to/file.py:make_model``: a callable in a Python file, imported from that path;
- ``package.module:make_model``: a callable in an importable module.

A factory is called without arguments and must return a ``torch.nn.Module`` mapping images in
[0, 1] (N, C, H, W) to logits (N, K). A model trained on normalised inputs is wrapped by
:class:`Normalized` when ``--mean`` / ``--std`` are given, so that attacks still work in the
[0, 1] image space where distances are measured (as torchattacks' ``set_normalization_used``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["Normalized", "load_model", "model_fingerprint", "model_label", "safe_name"]


class Normalized(nn.Module):
    """``model((x − mean) / std)``: a model on normalised inputs, seen as a model on [0, 1].

    Args:
        model: the wrapped model.
        mean, std: per-channel statistics (one value, or one per channel); ``std`` > 0.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError(
                f"mean and std must have the same (non-zero) number of channels, got "
                f"{len(mean)} and {len(std)}"
            )
        if min(std) <= 0:
            raise ValueError(f"std must be > 0, got {list(std)}")
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the normalised input."""
        return self.model((x - self.mean) / self.std)


def _split(spec: str) -> tuple[str, str] | None:
    """(source, attribute) of a ``source:callable`` spec, else None."""
    source, sep, attribute = spec.rpartition(":")
    if not sep or not source or not attribute.isidentifier():
        return None
    return source, attribute


def _is_module_name(source: str) -> bool:
    """``package.module`` (dotted identifiers), as opposed to a file name."""
    return all(part.isidentifier() for part in source.split("."))


def _import_source(source: str, spec: str) -> object:
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"model {spec!r}: the file {source!r} does not exist")
        return _exec_file(path, source, spec)
    if not _is_module_name(source):
        raise ValueError(
            f"model {spec!r}: expected 'file.py:callable' or 'package.module:callable', got "
            f"the source {source!r}"
        )
    # as `python -m`, whose sys.path starts with the working folder (a console script's does
    # not): a package in the folder the command runs from is found either way
    with _on_path(Path.cwd()):
        try:
            return importlib.import_module(source)
        except ModuleNotFoundError as error:
            raise ValueError(
                f"model {spec!r}: cannot import module {source!r} ({error}; its "
                "package must be in the working folder or on PYTHONPATH)"
            ) from None


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the block (imports a user's code makes from there)."""
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def _exec_file(path: Path, source: str, spec: str) -> object:
    """Import the factory file ``path`` (its own folder first on ``sys.path``, as ``python
    file.py`` would have it, so its imports of modules beside it work)."""
    name = "_alma_bench_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"model {spec!r}: cannot import the file {source!r}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _on_path(path.parent):
            module_spec.loader.exec_module(module)
    except Exception as error:  # the user's code: its error, as an argument error
        del sys.modules[name]
        raise ValueError(f"model {spec!r}: importing {source!r} failed: "
                         f"{type(error).__name__}: {error}") from error  # fmt: skip
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _from_factory(spec: str, source: str, attribute: str) -> nn.Module:
    module = _import_source(source, spec)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {source!r} has no callable {attribute!r}")
    try:
        model = factory()
    except Exception as error:  # the user's code (or a factory that needs arguments)
        raise ValueError(f"model {spec!r}: {attribute}() must run without arguments and return "
                         f"a torch.nn.Module, but it raised {type(error).__name__}: "
                         f"{error}") from error  # fmt: skip
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model {spec!r}: {attribute}() must return a torch.nn.Module, got "
            f"{type(model).__name__}"
        )
    return model


def load_model(
    spec: str,
    device: str | torch.device = "cpu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """The model ``spec`` (see the module doc) on ``device``, in eval mode, with frozen
    parameters (the runner's own instance: no attack needs weight gradients).

    Args:
        spec: embedded name, TorchScript file, ``file.py:callable`` or ``module:callable``.
        mean, std: normalisation of the model's inputs, applied to every model that is not
            embedded (the embedded ones take [0, 1] inputs); both or neither.

    Raises:
        ValueError: naming the spec and what was expected.
    """
    from ..zoo.models import MODEL_NAMES, load_smallcnn

    if (mean is None) != (std is None):
        raise ValueError(f"mean and std must be given together, got mean={mean} and std={std}")
    split = _split(spec)
    if spec in MODEL_NAMES:
        model: nn.Module = load_smallcnn(spec)
    elif Path(spec).is_file():
        try:
            model = torch.jit.load(spec, map_location="cpu")
        except Exception as error:  # a state dict, a pickle, any other file
            raise ValueError(
                f"model {spec!r}: expected a TorchScript file (torch.jit.save), "
                f"cannot load it: {type(error).__name__}: {error}"
            ) from error
    elif split is not None and (split[0].endswith(".py") or _is_module_name(split[0])):
        model = _from_factory(spec, *split)
    else:
        missing = " (no such file)" if spec.endswith((".pt", ".pth", ".ts", ".jit")) else ""
        raise ValueError(
            f"model must be one of {', '.join(MODEL_NAMES)}, a TorchScript file, "
            f"'file.py:callable' or 'module:callable', got {spec!r}{missing}"
        )
    if mean is not None and std is not None and spec not in MODEL_NAMES:
        model = Normalized(model, mean, std)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def model_label(spec: str) -> str:
    """The model's name in tables: the embedded name, the TorchScript file's stem, or
    ``stem:callable`` / ``module:callable`` for factories."""
    split = _split(spec)
    if split is not None and not Path(spec).is_file():
        source, attribute = split
        return f"{Path(source).stem if source.endswith('.py') else source}:{attribute}"
    return Path(spec).stem


def safe_name(label: str) -> str:
    """``label`` with characters other than letters, digits, ``_.-`` replaced (file names)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)


def _module_code(module: nn.Module) -> str:
    """The code behind a module's forward: TorchScript's ``code``, else its class's source
    (its qualified name where the source cannot be read)."""
    if isinstance(module, torch.jit.ScriptModule):
        try:
            return str(module.code)
        except RuntimeError:  # a ScriptModule without a forward of its own
            return type(module).__qualname__
    try:
        return inspect.getsource(type(module))
    except (OSError, TypeError):
        return f"{type(module).__module__}.{type(module).__qualname__}"


def _source_file(module: nn.Module) -> bytes:
    """The bytes of the file defining a module's class, for classes outside PyTorch (the
    module-level helpers its forward calls live there); empty otherwise."""
    cls = type(module)
    if cls.__module__.split(".")[0] == "torch":
        return b""
    try:
        return Path(inspect.getsourcefile(cls) or "").read_bytes()
    except (OSError, TypeError):
        return b""


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-256 of the model's code (each module's forward: its class's source, or
    TorchScript's code, and the file of each class outside PyTorch), of its ``repr`` (the
    settings modules keep as attributes: a LeakyReLU's slope, a pooling size) and of its
    parameters and buffers (names, shapes, values): what the resumable runner checks before
    reusing a finished batch, so an edited model with the same weights is recomputed too."""
    digest = hashlib.sha256()
    digest.update(repr(model).encode())
    files: set[bytes] = set()
    for module in model.modules():
        digest.update(_module_code(module).encode())
        files.add(_source_file(module))
    for content in sorted(files):
        digest.update(content)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()
