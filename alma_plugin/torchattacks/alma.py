"""``ALMA`` as a :class:`torchattacks.attack.Attack`: the Augmented Lagrangian attack of Rony,
Granger, Pedersoli and Ben Ayed (ICCV 2021) for every registry distance, and ALMA prox (Rony,
Pesquet and Ben Ayed, CVPR 2023) for ``distance="linf"``. The algorithms live in
:mod:`alma_plugin.core`; this module only translates torchattacks' conventions (images in
[0, 1], logits through ``get_logits``, targets through ``get_target_label``)."""

from __future__ import annotations

import torch

from .._entry import checked_lpips
from ..core.keywords import takes_params
from ..core.params import ALMA_STEPS, PROX_STEPS, ALMAParams
from ..core.prox_params import ProxParams, prox_params_for_linf
from ..core.restarts import check_restarts
from ..core.validation import check_early_stop, check_flag, check_positive_int
from ..distances import DistanceFunction
from ..distances._ssim import check_padding_for
from ..functional import alma, names_linf
from ._common import StateRestoringAttack, prepare, resolve_distance, target_labels

__all__ = ["ALMA"]


class ALMA(StateRestoringAttack):
    r"""ALMA (Rony et al., "Augmented Lagrangian Adversarial Attacks", ICCV 2021) and, for
    ``distance="linf"``, ALMA prox (Rony et al., "Proximal Splitting Adversarial Attack for
    Semantic Segmentation", CVPR 2023, §5.4 of Rony's thesis).

    Distance Measure: ``distance``: "l2", "l1", "ciede2000", "ssim", "msssim", "lpips" (any
    name of ``alma_plugin.distances.DISTANCES``) or "linf", measured on images in [0, 1].

    Finds minimal adversarial perturbations by solving min_δ D(x + δ, x) s.t.
    DLR⁺(f(x + δ), y) < 0 (eq. 5; tDLR⁺ of eq. 18 when targeted) with the penalty-Lagrangian
    method of Algorithm 2; for ℓ∞, with the proximal splitting of ALMA prox (Algorithm IV-2).
    Each step costs one forward and one backward propagation. Samples for which no adversarial
    is found are returned unchanged.

    Arguments:
        model (nn.Module): model to attack.
        distance (str): D to minimise. (Default: "l2")
        steps (int): number of iterations; None: the algorithm's budget, 1000 for ALMA and
            500 for ALMA prox ("linf"), as in ``alma()`` (the defaults of ``alma_prox()`` and
            of the Foolbox classes). (Default: None)
        early_stop (float): stop once every sample has an adversarial with D below this
            (for "linf": normalised ℓ∞); None or 0 never stop early.
        seed (int): seeds the random starts of ``restarts`` > 1 (ALMA and ALMA prox) and,
            for ALMA, the random directions used where a gradient vanishes. A seeded
            attack is deterministic: calling it again on the same batch returns the same
            result (there is no ``repeat``), except after ``set_mode_targeted_random``,
            whose targets come from torch's global generator as in torchattacks (the same
            after the same ``torch.manual_seed``); set ``attack.seed`` to vary it.
        lpips (LPIPS): for "lpips", the network to use, e.g.
            ``alma_plugin.distances.LPIPS(backbone_weights=..., linear_weights=...)``, or
            any callable (x_adv, x) -> (N,) on torch tensors in [0, 1]; None: the default
            weights, looked for locally on first use (never downloaded).
        padding (str): for "ssim" / "msssim", "symmetric" (default, also meant by None) or
            "valid": the windows whose SSIM gradient the attack descends, as
            ``alma(padding=...)`` and the Foolbox ``SSIMALMA``. "symmetric": the
            full-coverage SSIM's gradient (no perturbation pushed into the image border);
            "valid": the exact scikit-image SSIM itself (border artefact included, the
            stronger worst-case attack). Distances and success are the exact SSIM's either
            way. Other distances: None only. (Default: None)
        cuda_graphs (bool): for a model on a CUDA device, replay each step as a CUDA graph
            after 3 warm-up steps (as ``alma_plugin.alma``: same results, fewer kernel
            launches; the model's Python code runs for the warm-up and the capture only).
            (Default: False)
        params (ALMAParams): the hyperparameters, whose fields the keywords below replace;
            for "linf", a :class:`~alma_plugin.ProxParams` (then no keyword: an ALMA keyword
            with "linf" is a ``TypeError``, even at its default). Kept as None when neither
            ``params`` nor a keyword is given: the defaults of the distance at each call.
        **hyperparameters: every field of :class:`~alma_plugin.ALMAParams` (``alpha``,
            ``init_lr_distance``, ``init_lr``, ``lr_reduction``, ``penalty``, ``mu_init``,
            ...) with the paper's defaults, as ``inspect.signature(ALMA)`` shows, but for
            ``smooth_max`` (None: the distance's κ, ``DISTANCES[name].smooth_max``; 0:
            Algorithm 2's gradient) and ``restarts`` (None: for "l1" / "l2" in the default
            mode from 100 steps, two runs, run 1 aimed at another class; one run in a
            targeted mode, below 100 steps, on models with fewer than 4 classes and for the
            other distances; 1: one run).
            Algorithm 2 as published: ``params=ALMAParams.published()``.

    ``distance``, ``steps``, ``early_stop``, ``seed``, ``lpips``, ``padding``, ``cuda_graphs``
    and ``params`` are kept as attributes of the same name and read at each call:
    ``attack.steps = 100`` or ``attack.distance = "l1"`` after construction then picks α and ε
    for the new values (``params`` keeps None for "the paper's rule"), exactly as
    ``ALMA(model, steps=100)`` would; an invalid value set later is refused at the next call,
    naming the attribute.

    Shape:
        - images: (N, C, H, W), values in [0, 1] (normalised values after
          ``set_normalization_used``); (N, 3, H, W) for "ciede2000" and "lpips". Any float
          dtype of the model (float16 / bfloat16 models are called in their dtype, the
          attack computes in float32); ``requires_grad`` or inference-mode tensors are fine.
        - labels: (N,), integer classes of any integer dtype (targets in
          ``targeted(label)`` mode).
        - output: (N, C, H, W), the images' dtype, on the model's device.

    Like torchattacks' attacks, the model is evaluated in eval mode unless
    ``set_model_training_mode`` says otherwise; afterwards every module's mode, the
    parameters (values, ``requires_grad``, ``.grad``) and the buffers (batch norm running
    statistics) are as before, even after an error. Calls under ``torch.no_grad()`` or
    ``torch.inference_mode()`` work (autograd is enabled for the call).

    Examples::
        >>> from alma_plugin.zoo import load_mnist_heldout, load_smallcnn
        >>> model = load_smallcnn("mnist_regular")
        >>> images, labels = (t[:4] for t in load_mnist_heldout())
        >>> from alma_plugin import ProxParams
        >>> from alma_plugin.torchattacks import ALMA
        >>> attack = ALMA(model, distance="l2", steps=100)
        >>> adv_images = attack(images, labels)
        >>> bool((model(adv_images).argmax(1) != labels).all())
        True
        >>> adv_linf = ALMA(model, "linf", 100, params=ProxParams(init_lr=1e-2))(images, labels)
    """

    @takes_params(ALMAParams, alternative=ProxParams, alternative_if=names_linf)
    def __init__(
        self,
        model: torch.nn.Module,
        distance: str = "l2",
        steps: int | None = None,
        *,
        early_stop: float | None = None,
        seed: int = 0,
        lpips: DistanceFunction | None = None,
        padding: str | None = None,
        cuda_graphs: bool = False,
        params: ALMAParams | ProxParams | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):  # torchattacks reads its mode and device
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        super().__init__("ALMA", model)
        self.distance = resolve_distance(distance).name
        self.steps = None if steps is None else check_positive_int("steps", steps)
        self.early_stop = check_early_stop(early_stop)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.lpips = lpips
        self.padding = check_padding_for(self.distance, padding)
        self.cuda_graphs = check_flag("cuda_graphs", cuda_graphs)
        self.params = params
        if self.distance == "linf":
            prox_params_for_linf(params)  # ALMA keywords for ALMA prox: refused now
        elif isinstance(params, ProxParams):  # refused now too, as alma() would at the call
            raise TypeError(
                f"params must be an ALMAParams for distance={self.distance!r}, got {params!r}"
            )
        if params is not None:  # steps=None: alma()'s budget for the distance
            budget = self.steps or (PROX_STEPS if self.distance == "linf" else ALMA_STEPS)
            check_restarts(budget, params.restarts)
        if lpips is not None:
            checked_lpips(lpips, self.distance)  # the distance and a callable, as alma()'s
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Overridden.
        """
        # As in __init__: "inf" or "l_inf" set after construction is "linf", an invalid name
        # is refused here with the error naming ``distance``.
        spec = resolve_distance(self.distance)
        images, labels = prepare(self, images, labels, spec)
        targets = target_labels(self, images, labels) if self.targeted else labels
        # get_logits applies the normalisation of set_normalization_used, if any.
        result = alma(self.get_logits, images, targets, distance=spec.name,
                      steps=self.steps, targeted=bool(self.targeted), early_stop=self.early_stop,
                      seed=self.seed, lpips=self.lpips, padding=self.padding,
                      cuda_graphs=self.cuda_graphs, params=self.params)  # fmt: skip
        adversarials: torch.Tensor = result.adversarials
        return adversarials
