"""``Lagrangian`` as a :class:`torchattacks.attack.Attack`: the training attack of Azizmalayeri
and Rohban, "Lagrangian Objective Function Leads to Improved Unforeseen Attack Generalization in
Adversarial Training" (2021, Algorithm 1). The algorithm lives in
:mod:`alma_plugin.core.lagrangian`; this module only translates torchattacks' conventions
(images in [0, 1], logits through ``get_logits``, targets through ``get_target_label``)."""

from __future__ import annotations

import torch

from ..core.keywords import takes_params
from ..core.lagrangian import LAGRANGIAN_STEPS, LagrangianParams
from ..core.validation import check_positive_int
from ..distances import get_distance
from ..functional import lagrangian
from ._common import StateRestoringAttack, prepare, target_labels

__all__ = ["Lagrangian"]


class Lagrangian(StateRestoringAttack):
    r"""The Lagrangian training attack (Azizmalayeri & Rohban, 2021, Algorithm 1).

    Distance Measure : L2 (as a penalty, not a bound).

    N steps of gradient ascent on ℓ(f(x + δ), y) − λ′‖δ‖₂, with ℓ the C&W margin loss
    min(max_{j≠y} z_j − z_y, κ), a fixed schedule λ′ = λ·c^(1−i/N) and α′ = α·c^(i/N),
    gradients normalised by their largest coordinate and δ⁽⁰⁾ ~ N(0, σ²); x + δ is projected
    onto [0, 1] after every step. Made for adversarial training (drop it into a training loop,
    e.g. :func:`alma_plugin.training.adversarial_training`): the size of δ follows the
    classifier's confidence, and the last iterate is returned for *every* sample, whether it
    fools the model or not. Costs exactly N forward and N backward propagations.

    Arguments:
        model (nn.Module): model to attack.
        steps (int): N, number of iterations (the paper: at least 5). (Default: 5)
        seed (int): seeds the initial noise (NumPy's generator, the same noise at every call);
            None (default, as torchattacks' random starts): torch's generator, so every call
            draws fresh noise and ``torch.manual_seed`` makes a training run reproducible.
        params (LagrangianParams): the hyperparameters, whose fields the keywords below
            replace.
        **hyperparameters: every field of :class:`~alma_plugin.LagrangianParams`: ``init_lr``
            (α), ``multiplier`` (λ), ``init_variance`` (σ²), ``decay`` (c), ``kappa`` (κ), with
            their defaults, as ``inspect.signature(Lagrangian)`` shows.

    ``steps``, ``seed`` and ``params`` are attributes of the same name, read at each call.

    Shape:
        - images: (N, C, H, W), values in [0, 1] (normalised values after
          ``set_normalization_used``); any float dtype of the model.
        - labels: (N,), integer classes (targets in ``targeted(label)`` mode).
        - output: (N, C, H, W), the images' dtype, on the model's device.

    Like torchattacks' attacks, the model is evaluated in eval mode unless
    ``set_model_training_mode`` says otherwise; afterwards every module's mode, the parameters
    and the buffers are as before, even after an error.

    Examples::
        >>> from alma_plugin.zoo import load_mnist_heldout, load_smallcnn
        >>> model = load_smallcnn("mnist_regular")
        >>> images, labels = (t[:4] for t in load_mnist_heldout())
        >>> from alma_plugin.torchattacks import Lagrangian
        >>> attack = Lagrangian(model, steps=5, init_lr=0.1, multiplier=2.0)
        >>> adv_images = attack(images, labels)
        >>> adv_images.shape == images.shape
        True
    """

    @takes_params(LagrangianParams)
    def __init__(
        self,
        model: torch.nn.Module,
        steps: int = LAGRANGIAN_STEPS,
        *,
        seed: int | None = None,
        params: LagrangianParams | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):  # torchattacks reads its mode and device
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        super().__init__("Lagrangian", model)
        self.steps = check_positive_int("steps", steps)
        self.seed = None if seed is None else check_positive_int("seed", seed, minimum=0)
        self.params = params
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Overridden.
        """
        images, labels = prepare(self, images, labels, get_distance("l2"))
        targets = target_labels(self, images, labels) if self.targeted else labels
        # get_logits applies the normalisation of set_normalization_used, if any.
        result = lagrangian(self.get_logits, images, targets, steps=self.steps,
                            targeted=bool(self.targeted), seed=self.seed,
                            params=self.params)  # fmt: skip
        perturbed: torch.Tensor = result.perturbed
        return perturbed
