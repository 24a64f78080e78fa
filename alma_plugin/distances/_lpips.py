"""LPIPS (AlexNet, v0.1) as a per-sample, differentiable distance on PyTorch tensors.

Zhang, Isola, Efros, Shechtman & Wang, "The unreasonable effectiveness of deep features as a
perceptual metric", CVPR 2018, eq. 1:

    d(x̃, x) = Σₗ 1/(Hₗ Wₗ) Σₕ,𝓌 ‖ wₗ ⊙ (ŷₗ(x̃)ₕ𝓌 − ŷₗ(x)ₕ𝓌) ‖₂²,

where ŷₗ are the AlexNet feature maps after relu1 … relu5, unit-normalised along channels
(ŷ = y / (‖y‖₂ + 10⁻¹⁰)), and wₗ ≥ 0 the learned "v0.1" linear weights (a 1×1 convolution to
one channel, no bias; so ‖wₗ ⊙ ·‖₂² is written here as Σ_c w_c (·)²). Inputs in [0, 1] are mapped
to [−1, 1] and then through the LPIPS scaling layer, (z − shift) / scale with
shift = (−0.030, −0.088, −0.188), scale = (0.458, 0.448, 0.450).

Weights are never downloaded:

* backbone: ``backbone_weights`` (a path or a torchvision-format state dict), else the torch
  hub cache file ``<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth`` (also looked for
  under ``~/.cache/torch/hub``);
* linear layers: ``linear_weights`` (path or state dict with keys ``lin{k}.model.1.weight``),
  else ``lpips/weights/v0.1/alex.pth`` of an installed ``lpips`` package, found with
  ``importlib.util.find_spec`` / ``importlib.metadata`` without importing it (importing lpips
  imports torchvision).

On a CUDA device the network's forward pass runs its convolutions in full float32: cuDNN's
default TF32 convolutions (``torch.backends.cudnn.allow_tf32``, True unless set) round the
inputs to 10 bits of mantissa, which made LPIPS 0.05 % off at 1.6·10⁻², 0.4 % at 1.8·10⁻⁴
and 21 % at 1.9·10⁻⁶ on an H100 (random weights, 64 px); the setting is lifted for the
forward pass and restored after (:func:`._common.full_precision_cuda`; about 1.6× the time of
a TF32 forward + backward there). The backward pass runs later, under the caller's setting:
gradients may use TF32.

If a file is found nowhere, :class:`LPIPSWeightsNotFoundError` lists every place looked.
The network needs inputs of at least 31×31 pixels (relu5 of a 32×32 image is 1×1): smaller
ones raise ``ValueError`` (:data:`LPIPS_MIN_SIZE`).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar, Union

import eagerpy as ep
import torch
from torch import nn

from ._alexnet import LPIPS_CHANNELS, AlexNetFeatures
from ._color import check_color_input
from ._common import apply_distance, full_precision_cuda, without_autocast

ALEXNET_HUB_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_LINEAR_FILE = ("weights", "v0.1", "alex.pth")
SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
#: Smallest height and width AlexNet's taps accept: conv1 (11×11, stride 4, padding 2) must
#: leave 7 rows, so that its 3×3 / stride-2 max pool leaves the 3 that the next one needs.
LPIPS_MIN_SIZE = 31

T = TypeVar("T")
WeightsSource = Union[str, "os.PathLike[str]", Mapping[str, torch.Tensor], None]


class LPIPSWeightsNotFoundError(FileNotFoundError):
    """No weights file was given and none was found where one is usually installed."""


def _unique(paths: list[Path]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        if path not in seen:
            seen.append(path)
    return seen


def backbone_weight_candidates() -> list[Path]:
    """Where an AlexNet backbone file is looked for when no path is given."""
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_HUB_FILE]
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home:
        candidates.append(Path(torch_home) / "hub" / "checkpoints" / ALEXNET_HUB_FILE)
    candidates.append(Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / ALEXNET_HUB_FILE)
    return _unique(candidates)


def linear_weight_candidates() -> list[Path]:
    """Where the ``lpips`` package's v0.1 AlexNet linear weights are looked for."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location).joinpath(*LPIPS_LINEAR_FILE))
    try:
        files = importlib.metadata.files("lpips") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    suffix = "/".join(("lpips",) + LPIPS_LINEAR_FILE)
    for file in files:
        if str(file).replace("\\", "/").endswith(suffix):
            candidates.append(Path(str(file.locate())))
    if not candidates:
        candidates.append(Path("<site-packages>").joinpath("lpips", *LPIPS_LINEAR_FILE))
    return _unique(candidates)


def _load(source: WeightsSource, candidates: list[Path], what: str) -> Mapping[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return source
    if source is not None and not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"{what} weights must be a path or a state dict (or None: the default weights), "
            f"got {type(source).__name__}"
        )
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise LPIPSWeightsNotFoundError(f"{what} weights file not found: {path}")
        return torch.load(path, map_location="cpu", weights_only=True)
    for path in candidates:
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    looked = "\n  ".join(str(p) for p in candidates)
    raise LPIPSWeightsNotFoundError(
        f"no {what} weights found (nothing is downloaded). Looked in:\n  {looked}\n"
        f"Pass a path (or a state dict) explicitly."
    )


def _safe_unit_normalize(y: torch.Tensor) -> torch.Tensor:
    """y / (‖y‖₂ over channels + 1e-10), with a finite gradient where y = 0."""
    squared = y.square().sum(dim=1, keepdim=True)
    positive = squared > 0
    norm = torch.where(positive, torch.where(positive, squared, 1).sqrt(), 0)
    return y / (norm + NORM_EPS)


def check_lpips_input(x_adv: ep.Tensor) -> None:
    """Raise unless ``x_adv`` is an eagerpy PyTorch RGB batch of at least
    :data:`LPIPS_MIN_SIZE` pixels a side (``x`` matches it already)."""
    if not isinstance(x_adv, ep.PyTorchTensor):
        raise TypeError(
            "LPIPS needs PyTorch tensors (its network is a torch module), got "
            f"{type(x_adv.raw).__module__}.{type(x_adv.raw).__qualname__}"
        )
    check_color_input(x_adv, "x_adv")
    # Smaller images fail deep inside torch ("Calculated output size: (192x0x0)").
    if min(x_adv.shape[2], x_adv.shape[3]) < LPIPS_MIN_SIZE:
        raise ValueError(
            f"x_adv must be images of at least {LPIPS_MIN_SIZE}×{LPIPS_MIN_SIZE} pixels for "
            f"LPIPS (AlexNet's feature maps vanish below), got x_adv.shape={tuple(x_adv.shape)}"
        )


class LPIPSNetwork(nn.Module):
    """AlexNet trunk + the five non-negative linear heads; maps [0, 1] image pairs to (N,)."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        backbone: Mapping[str, torch.Tensor],
        linear: Mapping[str, torch.Tensor],
    ) -> None:
        super().__init__()
        # the layers' random initialisation, overwritten at once, would advance torch's
        # global generator: no attack draws from it (README, "Restarts inside the budget")
        with torch.random.fork_rng(devices=[]):
            self.net = AlexNetFeatures()
        self.net.load_torchvision_state_dict(backbone)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        heads = []
        for k, channels in enumerate(LPIPS_CHANNELS):
            key = f"lin{k}.model.1.weight"
            if key not in linear:
                raise ValueError(
                    f"the linear weights lack {key!r} (lpips 'v0.1' format expected); "
                    f"keys present: {sorted(linear)}"
                )
            weight = torch.as_tensor(linear[key]).detach().to(torch.float32)
            if weight.numel() != channels:
                raise ValueError(f"{key} must hold {channels} weights, got {tuple(weight.shape)}")
            heads.append(weight.reshape(channels))
        self.linear = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in heads)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        both = torch.cat([x_adv, x], dim=0)
        both = (2 * both - 1 - self.shift) / self.scale
        total = both.new_zeros(n)
        for feature, weight in zip(self.net.taps(both), self.linear, strict=True):
            normalized = _safe_unit_normalize(feature)
            squared = (normalized[:n] - normalized[n:]).square()
            total = total + (squared * weight.view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
        return total


class LPIPS:
    """LPIPS-AlexNet distance: ``LPIPS(...)(x_adv, x)`` maps NCHW batches to (N,).

    Args:
        backbone_weights: path to (or state dict of) a torchvision-format AlexNet; default: the
            torch hub cache file ``alexnet-owt-7be5be79.pth``.
        linear_weights: path to (or state dict of) the lpips v0.1 AlexNet linear layers;
            default: the file shipped in an installed ``lpips`` package.

    Only PyTorch tensors are supported (others raise ``TypeError``); the network follows the
    input's device and its compute dtype (float32 for 16-bit inputs).
    """

    def __init__(
        self, backbone_weights: WeightsSource = None, linear_weights: WeightsSource = None
    ) -> None:
        backbone = _load(backbone_weights, backbone_weight_candidates(), "AlexNet backbone")
        linear = _load(linear_weights, linear_weight_candidates(), "LPIPS v0.1 linear-layer")
        self.network = LPIPSNetwork(backbone, linear)
        self._copies: dict[tuple[torch.device, torch.dtype], LPIPSNetwork] = {}

    def _network_for(self, x: torch.Tensor) -> LPIPSNetwork:
        key = (x.device, x.dtype)
        if key not in self._copies:
            same = key == (torch.device("cpu"), torch.float32)
            network = self.network if same else copy.deepcopy(self.network)
            self._copies[key] = network.to(device=x.device, dtype=x.dtype)
        return self._copies[key]

    def torch_distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """LPIPS on raw torch tensors (N, 3, H, W) in [0, 1] → (N,); on CUDA with full-precision
        convolutions in the forward pass (module docstring), never in the caller's autocast."""
        network = self._network_for(x)
        with without_autocast(x):
            if not x.is_cuda:
                return network(x_adv, x)
            with full_precision_cuda(convolutions=True):
                return network(x_adv, x)

    def eager_distance(self, x_adv: ep.Tensor, x: ep.Tensor) -> ep.Tensor:
        """LPIPS on eagerpy PyTorch tensors, without the package's input contract."""
        check_lpips_input(x_adv)
        return ep.astensor(self.torch_distance(x_adv.raw, x.raw))

    @property
    def unchecked(self) -> Callable[[ep.Tensor, ep.Tensor], ep.Tensor]:
        """What :func:`~alma_plugin.distances._common.unchecked` finds: the solvers' loops call
        :meth:`eager_distance` (their iterates are validated and in [0, 1]; the contract's range
        check would read the host at every step)."""
        return self.eager_distance

    def __call__(self, x_adv: T, x: T) -> T:
        """LPIPS per sample, shape (N,), of RGB batches (N, 3, H, W) in [0, 1] (H, W ≥ 31).

        Takes raw torch or eagerpy tensors and returns the same type (see
        :mod:`alma_plugin.distances` for dtypes and NaN handling).
        """
        return apply_distance(self.eager_distance, x_adv, x, "lpips")


_DEFAULT: LPIPS | None = None


def default_lpips() -> LPIPS:
    """The LPIPS instance built (once, on first use) from the default weight locations."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LPIPS()
    return _DEFAULT
