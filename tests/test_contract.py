"""The contract table (issue 10, in the spirit of Foolbox's ``tests/test_attacks.py``).

Every public entry point — ``alma_plugin.alma``, ``alma_plugin.alma_prox``, each
Foolbox attack of ``alma_plugin.foolbox``, torchattacks ``ALMA`` and ``MinimalEnsemble``, every
distance of ``alma_plugin.distances`` — × backend (PyTorch; JAX where supported) × the cases
users hit (empty batch, batch of 1, every float dtype, every integer label dtype and container,
K = 1, 2, 3, 10, models that are not differentiable, return non-tensors, return NaN, are in
training mode or raise midway, channels-first/last, bounds other than (0, 1), requires_grad and
inference-mode inputs, success predicates of wrong shape or dtype).

The table is data: :func:`table` lists the rows, and one checker,
:func:`tests.contract.check`, asserts the same invariants
(:data:`tests.contract.INVARIANTS`) on each.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from alma_plugin import ALMAParams, ProxParams
from tests.contract import (
    HAS_JAX,
    HAS_TF,
    INVARIANTS,
    NO_SUCCESS_NEEDED,
    OK,
    Case,
    Expect,
    alma_case,
    check,
    distance_case,
    either,
    foolbox_case,
    lagrangian_case,
    on_device,
    prox_case,
    raises,
    torchattacks_case,
)
from tests.contract.distances import random_lpips

pytestmark = pytest.mark.usefixtures("single_thread")

P = functools.partial
MIDWAY = raises("midway", RuntimeError)
MODEL = raises("model")
MODEL_OR_RESULT = either("model")
NAN_MODEL = either("model", succeeds=False)  # NaN everywhere: no success can be claimed
NAN_MODEL = either("model", succeeds=False)  # NaN everywhere: no success can be claimed
LABEL_DTYPES = ("uint8", "int8", "int16", "int32", "int64")
HALF_DTYPES = ("float16", "bfloat16")


class Table:
    def __init__(self) -> None:
        # (row, the framework it needs beyond PyTorch: None, "jax" or "tf", slow)
        self.rows: list[tuple[Case, str | None, bool]] = []
        self.slow = False  # mark the rows added meanwhile as slow

    def add(
        self,
        id: str,
        build: Callable[[], Any],
        expect: Expect = OK,
        *,
        warns: bool = False,
        jax: bool = False,
        tf: bool = False,
        slow: bool = False,
        x64: bool = False,
    ) -> None:
        # slow: the first JAX run of a new family of primitives compiles each of them (10-30 s
        # on one core for ALMA prox, CIEDE2000, SSIM, MS-SSIM): run by CI, not by `-m "not slow"`
        # x64: a JAX row in float64, built and run with JAX's 64-bit types enabled
        needs = "jax" if jax or x64 else "tf" if tf else None
        self.rows.append((Case(id, build, expect, warns, x64), needs, slow or self.slow))


#: Bounds no float dtype below float64 represents: clipping onto them, or casting a clipped
#: float32 tensor to float16, rounds past them unless the values inside are used.
INEXACT = (0.1, 0.3)
NORMALISED_MNIST = ((0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081)


def _classifier_cases(
    t: Table,
    prefix: str,
    builder: Callable[..., Any],
    *,
    jax: bool = False,
    warns: bool = False,
    bounds: bool = True,
) -> None:
    """The rows every classification entry point shares (``builder`` takes the options). JAX
    compiles every primitive per shape and dtype (seconds per new combination), so its rows keep
    one shape and dtype except where the row is about them."""
    b = builder
    t.add(f"{prefix}-basic", P(b), jax=jax)
    t.add(f"{prefix}-empty", P(b, n=0), jax=jax)
    t.add(f"{prefix}-K1", P(b, k=1), MODEL, jax=jax)
    t.add(f"{prefix}-labels-uint8", P(b, labels_dtype="uint8"), jax=jax)
    if bounds:
        t.add(f"{prefix}-bounds255", P(b, bounds=(0.0, 255.0)), jax=jax)
    if not jax:  # a JAX model cannot return NumPy while differentiated (JAX's own error)
        t.add(f"{prefix}-model-numpy", P(b, variant="numpy"), MODEL)
    t.add(f"{prefix}-model-nan-far", P(b, variant="nan_far"), NO_SUCCESS_NEEDED, jax=jax)
    t.add(f"{prefix}-model-raises", P(b, variant="raise_train"), MIDWAY, jax=jax,
          warns=warns and not jax)  # fmt: skip
    t.add(f"{prefix}-steps-float", P(b, steps=100.0), raises("steps", TypeError), jax=jax)
    # CUDA graphs need PyTorch on a CUDA device: refused on these CPU (and JAX) tensors
    t.add(f"{prefix}-cuda_graphs-cpu", P(b, cuda_graphs=True), raises("cuda_graphs"), jax=jax)
    if jax:
        return
    t.add(f"{prefix}-cuda_graphs-str", P(b, cuda_graphs="yes"), raises("cuda_graphs", TypeError))
    t.add(f"{prefix}-batch1", P(b, n=1))
    t.add(f"{prefix}-targeted", P(b, targeted=True))
    for k in (2, 10):
        t.add(f"{prefix}-K{k}", P(b, k=k))
    for dtype in HALF_DTYPES + ("float64",):
        t.add(f"{prefix}-{dtype}", P(b, dtype=dtype))
    for labels in ("int8", "int16", "int32"):
        t.add(f"{prefix}-labels-{labels}", P(b, labels_dtype=labels))
    if bounds:
        t.add(f"{prefix}-bounds-1to1", P(b, bounds=(-1.0, 1.0)))
        # bounds the dtype cannot represent (0.3; MNIST's normalised range), inputs up to them
        for dtype in ("float32",) + HALF_DTYPES:
            t.add(f"{prefix}-bounds-inexact-{dtype}", P(b, bounds=INEXACT, dtype=dtype, spread=0.5))
        t.add(f"{prefix}-bounds-normalised", P(b, bounds=NORMALISED_MNIST, spread=0.5))
    t.add(f"{prefix}-model-argmax", P(b, variant="argmax"), MODEL_OR_RESULT)
    t.add(f"{prefix}-model-nan", P(b, variant="nan"), NAN_MODEL)
    t.add(f"{prefix}-steps-np.int64", P(b, steps=np.int64(5)))
    t.add(f"{prefix}-model-detached", P(b, variant="detached"), MODEL_OR_RESULT)
    t.add(f"{prefix}-model-list", P(b, variant="list"), MODEL)
    t.add(f"{prefix}-model-train", P(b, variant="train"), warns=warns)
    # a float64 head on float32 inputs: every entry point runs it, and its claims re-verify
    # on the float64 logits (the loss of samples to float32 ties is tested in test_validation)
    t.add(f"{prefix}-model-float64-offset", P(b, variant="offset64"))
    t.add(f"{prefix}-requires_grad", P(b, mode="requires_grad"))
    t.add(f"{prefix}-inference_mode", P(b, mode="inference"))


def _with_random_lpips(case: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The row of ``case`` with an LPIPS of seeded random weights, built with the row."""
    return case(*args, lpips=random_lpips(), **kwargs)


def table() -> list[tuple[Case, bool, bool]]:
    t = Table()

    # alma(): ℓ1 and ℓ2 on PyTorch and JAX
    for distance in ("l2", "l1"):
        for jax in (False, True):
            prefix = f"alma-{distance}-{'jax' if jax else 'torch'}"
            framework = "jax" if jax else "torch"
            b = P(alma_case, distance=distance, framework=framework, steps=5 if jax else 10)
            _classifier_cases(t, prefix, b, jax=jax, warns=True)
            t.add(f"{prefix}-labels-numpy", P(b, container="numpy", labels_dtype="int16"), jax=jax)
            t.add(f"{prefix}-labels-list", P(b, container="list"), jax=jax)
            t.add(f"{prefix}-labels-out-of-range", P(b, label_offset=3), raises("labels"), jax=jax)
            t.add(f"{prefix}-early_stop-0", P(b, early_stop=0.0), jax=jax)
            if jax:
                t.add(f"{prefix}-float64", P(b, dtype="float64"), x64=True)
                if distance == "l2":
                    for dtype in HALF_DTYPES:
                        t.add(f"{prefix}-{dtype}", P(b, dtype=dtype), jax=True)
                    t.add(f"{prefix}-targeted", P(b, targeted=True), jax=True)
                continue
            t.add(f"{prefix}-model-batchnorm-train", P(b, variant="batchnorm"), warns=True)
            t.add(f"{prefix}-conv", P(b, conv=True))
            t.add(f"{prefix}-channels_last-memory", P(b, conv=True, mode="channels_last"))
            t.add(f"{prefix}-inputs-outside-bounds", P(b, call_bounds=(0.6, 1.0)),
                  raises("inputs|bounds"))  # fmt: skip
    # alma(distance="linf"): ALMA prox for classification, called directly (PyTorch)
    _classifier_cases(t, "alma-linf-torch", P(alma_case, distance="linf", steps=10), warns=True)
    b_torch = P(alma_case, steps=10)
    b_jax = P(alma_case, framework="jax", steps=5)
    for name, b, jax in (("torch", b_torch, False), ("jax", b_jax, True)):
        t.add(f"alma-{name}-predicate-nan-far", P(b, predicate="ok", variant="nan_far"),
              NO_SUCCESS_NEEDED, jax=jax)  # fmt: skip
        for wrong in (
            ("column", "float") if jax else ("column", "longer", "scalar", "float", "none")
        ):
            t.add(f"alma-{name}-predicate-{wrong}", P(b, predicate=wrong),
                  raises("is_adversarial"), jax=jax)  # fmt: skip
    t.add("alma-torch-predicate-numpy", P(b_torch, predicate="numpy"), either("is_adversarial"))
    t.add("alma-torch-predicate-host", P(b_torch, predicate="host"))
    t.add("prox-predicate-host", P(alma_case, distance="linf", predicate="host"))
    t.add("alma-torch-targeted-out-of-range", P(b_torch, targeted=True, label_offset=3),
          raises("targets|labels"))  # fmt: skip
    steps_seen: list[int] = []
    t.add("alma-torch-callback", P(b_torch, callback=lambda info: steps_seen.append(info.step)))

    def failing_callback(info: Any) -> None:
        if info.step == 2:
            raise RuntimeError("callback failed midway (contract test)")

    t.add("alma-torch-callback-raises", P(b_torch, callback=failing_callback), MIDWAY)
    # restarts (R runs share the budget): every entry point, the early stop across runs, and
    # a clear error for more runs than steps
    for distance in ("l2", "l1", "ssim"):
        shape = (1, 12, 12) if distance == "ssim" else (1, 8, 8)
        b = P(alma_case, distance=distance, shape=shape, restarts=3, steps=30)
        t.add(f"alma-{distance}-torch-restarts", b)
    t.add("alma-l2-jax-restarts", P(b_jax, restarts=2), jax=True)
    t.add("alma-torch-restarts-early_stop", P(b_torch, restarts=2, early_stop=100.0))
    t.add("alma-torch-restarts-targeted", P(b_torch, restarts=2, targeted=True))
    t.add("alma-torch-restarts-float16", P(b_torch, restarts=2, dtype="float16"))
    t.add("alma-torch-restarts-bounds255", P(b_torch, restarts=2, bounds=(0.0, 255.0)))
    t.add("alma-torch-restarts-above-steps", P(b_torch, restarts=11), raises("restarts"))
    t.add("alma-torch-restarts-0", P(b_torch, restarts=0), raises("restarts"))
    t.add("alma-torch-restart_distance-0", P(b_torch, restarts=2, restart_distance=0.0),
          raises("restart_distance"))  # fmt: skip
    t.add("alma-linf-torch-restarts", P(b_torch, distance="linf", restarts=2),
          raises("ProxParams", TypeError))  # fmt: skip
    # an ALMA keyword given with "linf" is refused even at its default value (it was dropped)
    t.add("alma-linf-torch-lr_reduction-default", P(b_torch, distance="linf", lr_reduction=0.01),
          raises("ProxParams", TypeError))  # fmt: skip
    t.add("alma-linf-torch-params-default", P(b_torch, distance="linf", params=ALMAParams()),
          raises("ProxParams", TypeError))  # fmt: skip
    t.add("prox-restarts", P(prox_case, params=ProxParams(restarts=2, init_lr=0.05)))
    t.add("prox-restarts-masked-targeted", P(prox_case, masked=True, targeted=True, steps=30,
          params=ProxParams(restarts=3, init_lr=0.05)))  # fmt: skip
    t.add("prox-restarts-above-steps", P(prox_case, steps=2, params=ProxParams(restarts=3)),
          raises("restarts"))  # fmt: skip
    # restarts aimed at the next classes (restart_mode="classes"): untargeted classification
    # only, K ≥ R
    t.add("alma-torch-restarts-classes", P(b_torch, restarts=2, restart_mode="classes"))
    t.add("alma-l1-torch-restarts-classes-k5", P(b_torch, distance="l1", k=5, restarts=5,
          restart_mode="classes"))  # fmt: skip
    t.add("alma-l2-jax-restarts-classes", P(b_jax, restarts=2, restart_mode="classes"), jax=True)
    t.add("alma-torch-restarts-classes-early_stop", P(b_torch, restarts=2, early_stop=100.0,
          restart_mode="classes"))  # fmt: skip
    t.add("alma-torch-restarts-classes-float16", P(b_torch, restarts=2, dtype="float16",
          restart_mode="classes"))  # fmt: skip
    t.add("alma-torch-restarts-classes-targeted", P(b_torch, restarts=2, targeted=True,
          restart_mode="classes"), raises("restart_mode"))  # fmt: skip
    t.add("alma-torch-restarts-classes-above-k", P(b_torch, restarts=4, restart_mode="classes"),
          raises("restarts"))  # fmt: skip
    t.add("alma-torch-restart_mode-unknown", P(b_torch, restarts=2, restart_mode="target"),
          raises("restart_mode"))  # fmt: skip
    # a longer first run (first_run_share): ALMA and ALMA prox, PyTorch and JAX, early stop
    share = {"restarts": 2, "restart_mode": "classes", "first_run_share": 0.7}
    t.add("alma-l1-torch-first_run_share", P(b_torch, distance="l1", **share))
    t.add("alma-l1-jax-first_run_share", P(b_jax, distance="l1", **share), jax=True)
    t.add("alma-torch-first_run_share-early_stop", P(b_torch, early_stop=100.0, **share))
    t.add("alma-linf-torch-first_run_share", P(b_torch, distance="linf",
          params=ProxParams(**share)))  # fmt: skip
    t.add("alma-torch-first_run_share-1", P(b_torch, restarts=2, first_run_share=1.0),
          raises("first_run_share"))  # fmt: skip
    classes = ProxParams(restarts=2, restart_mode="classes")
    t.add("alma-linf-torch-restarts-classes", P(b_torch, distance="linf", params=classes))
    t.add("alma-linf-jax-restarts-classes", P(b_jax, distance="linf", params=classes), jax=True)
    t.add("alma-linf-jax-basic", P(b_jax, distance="linf"), jax=True, slow=True)
    t.add("alma-linf-jax-float64", P(b_jax, distance="linf", dtype="float64"), x64=True,
          slow=True)  # fmt: skip
    t.add("prox-restarts-classes-dense", P(prox_case, params=classes), raises("restart_mode"))
    # the smoothed max of DLR⁺'s gradient (ProxParams.smooth_max; classification's default is
    # κ = 0.1, so the rows above run it): κ = 0, the thesis' gradient, for classification, on
    # PyTorch and JAX; κ > 0 for dense outputs (segmentation, whose default is 0), masked and
    # targeted (tDLR⁺ keeps the plain gradient); class restarts (their aimed runs keep tDLR⁺)
    thesis = ProxParams(smooth_max=0.0)
    t.add("alma-linf-torch-smooth_max-0", P(b_torch, distance="linf", params=thesis))
    t.add("alma-linf-jax-smooth_max-0", P(b_jax, distance="linf", params=thesis), jax=True)
    t.add("alma-linf-torch-smooth_max-restarts-classes", P(b_torch, distance="linf",
          params=ProxParams(smooth_max=0.3, restarts=2, restart_mode="classes")))  # fmt: skip
    t.add("prox-smooth_max", P(prox_case, params=ProxParams(smooth_max=0.1, init_lr=0.05)))
    t.add("prox-smooth_max-masked-targeted", P(prox_case, masked=True, targeted=True,
          params=ProxParams(smooth_max=0.1, init_lr=0.05)))  # fmt: skip
    t.add("prox-smooth_max-negative", P(prox_case, smooth_max=-0.1), raises("smooth_max"))
    # ALMA's smoothed max (ALMAParams.smooth_max, default 0: the paper's gradient)
    t.add("alma-l2-torch-smooth_max", P(b_torch, smooth_max=0.1))
    t.add("alma-l1-torch-smooth_max-restarts-classes", P(b_torch, distance="l1", k=5,
          restarts=2, restart_mode="classes", smooth_max=0.3))  # fmt: skip
    t.add("alma-l2-torch-smooth_max-targeted", P(b_torch, targeted=True, smooth_max=0.1))
    t.add("alma-l2-jax-smooth_max", P(b_jax, smooth_max=0.1), jax=True)
    t.add("alma-ssim-torch-smooth_max", P(b_torch, distance="ssim", shape=(1, 12, 12),
          smooth_max=0.1))  # fmt: skip
    t.add("alma-l2-torch-smooth_max-inf", P(b_torch, smooth_max=float("inf")), raises("smooth_max"))

    # perceptual distances through alma() (PyTorch; JAX runs them through Foolbox below)
    for distance, shape in (("ciede2000", (3, 8, 8)), ("ssim", (1, 12, 12))):
        prefix = f"alma-{distance}-torch"
        # CIEDE2000 needs more than the other rows' 10 steps to show a success
        steps = 30 if distance == "ciede2000" else 10
        b = P(alma_case, distance=distance, shape=shape, steps=steps)
        t.add(f"{prefix}-basic", b)
        t.add(f"{prefix}-empty", P(b, n=0))
        t.add(f"{prefix}-bounds255", P(b, bounds=(0.0, 255.0)))
        t.add(f"{prefix}-model-nan-far", P(b, variant="nan_far"), NO_SUCCESS_NEEDED)
        for dtype in HALF_DTYPES + ("float64",):
            t.add(f"{prefix}-{dtype}", P(b, dtype=dtype))
        t.add(f"{prefix}-requires_grad", P(b, mode="requires_grad"))
    t.add("alma-ciede2000-torch-gray", P(alma_case, distance="ciede2000"), raises("inputs"))
    t.add("alma-lpips-torch-gray", P(alma_case, distance="lpips"), raises("inputs"))
    t.add("alma-msssim-torch-small", P(alma_case, distance="msssim", shape=(1, 12, 12)),
          raises("inputs"))  # fmt: skip
    # LPIPS (seeded random AlexNet weights: no weight files on CI) and MS-SSIM at the smallest
    # sizes they take, run to a result in every entry point
    for name, case in (("alma", alma_case), ("fb", foolbox_case), ("ta", torchattacks_case)):
        lpips_row = P(_with_random_lpips, case, shape=(3, 32, 32), n=2, steps=10)
        msssim_row = P(case, shape=(1, 176, 176), n=2, steps=5)
        if name == "fb":
            rows = (
                ("LPIPSALMA", P(lpips_row, "LPIPSALMA", epsilons=(0.0, 0.01, None))),
                ("MSSSIMALMA", P(msssim_row, "MSSSIMALMA", epsilons=(0.0, 0.01, None))),
            )
        else:
            rows = (("lpips", P(lpips_row, distance="lpips")),
                    ("msssim", P(msssim_row, distance="msssim")))  # fmt: skip
        for what, row in rows:
            t.add(f"{name}-{what}-torch-result" if name != "ta" else f"ta-ALMA-{what}-result",
                  row, slow=True)  # fmt: skip
    # padding= (the SSIM windows descended): "valid" runs, elsewhere a clear error
    ssim_case = P(alma_case, distance="ssim", shape=(1, 12, 12))
    t.add("alma-ssim-torch-padding-valid", P(ssim_case, padding="valid"))
    t.add("alma-ssim-torch-padding-same", P(ssim_case, padding="same"), raises("padding"))
    for distance in ("l2", "linf"):
        t.add(f"alma-{distance}-torch-padding", P(alma_case, distance=distance, padding="valid"),
              raises("padding"))  # fmt: skip

    # segmentation.alma_prox (dense logits)
    b = P(prox_case)
    t.add("prox-basic", b)
    t.add("prox-masked", P(b, masked=True))
    for container in ("uint8", "numpy", "list"):
        t.add(f"prox-masked-{container}", P(b, masked=True, mask_container=container))
    t.add("prox-masked-jax-array", P(b, masked=True, mask_container="jax"), jax=True)
    t.add("prox-masked-str", P(b, masked=True, mask_container="str"), raises("masks", TypeError))
    t.add("prox-targeted", P(b, targeted=True))
    t.add("prox-batch1", P(b, n=1))
    t.add("prox-empty", P(b, n=0), either("images|inputs"))
    t.add("prox-K1", P(b, k=1), MODEL)
    for k in (2, 10):
        t.add(f"prox-K{k}", P(b, k=k))
    for dtype in HALF_DTYPES + ("float64",):
        t.add(f"prox-{dtype}", P(b, dtype=dtype))
    for labels in LABEL_DTYPES[:-1]:
        t.add(f"prox-labels-{labels}", P(b, labels_dtype=labels))
    t.add("prox-labels-numpy", P(b, container="numpy"), either("labels"))
    t.add("prox-labels-list", P(b, container="list"), either("labels"))
    t.add("prox-bounds255", P(b, bounds=(0.0, 255.0)))
    t.add("prox-bounds-1to1", P(b, bounds=(-1.0, 1.0)))
    for dtype in ("float32",) + HALF_DTYPES:
        # inputs over the whole box, most pixels far from a class boundary: a larger λ⁽⁰⁾
        t.add(f"prox-bounds-inexact-{dtype}",
              P(b, bounds=INEXACT, dtype=dtype, spread=0.5, init_lr=0.2))  # fmt: skip
    t.add("prox-model-argmax", P(b, variant="argmax"), MODEL_OR_RESULT)
    t.add("prox-model-detached", P(b, variant="detached"), MODEL_OR_RESULT)
    t.add("prox-model-numpy", P(b, variant="numpy"), MODEL)
    t.add("prox-model-list", P(b, variant="list"), MODEL)
    t.add("prox-model-nan", P(b, variant="nan"), NAN_MODEL)
    t.add("prox-model-nan-far", P(b, variant="nan_far"), NO_SUCCESS_NEEDED)
    t.add("prox-model-train", P(b, variant="train"), warns=True)
    t.add("prox-model-batchnorm-train", P(b, variant="batchnorm"), warns=True)
    t.add("prox-model-raises", P(b, variant="raise_train"), MIDWAY, warns=True)
    t.add("prox-requires_grad", P(b, mode="requires_grad"))
    t.add("prox-inference_mode", P(b, mode="inference"))
    t.add("prox-steps-float", P(b, steps=100.0), raises("steps", TypeError))
    t.add("prox-cuda_graphs-cpu", P(b, cuda_graphs=True), raises("cuda_graphs"))
    t.add("prox-cuda_graphs-str", P(b, cuda_graphs="yes"), raises("cuda_graphs", TypeError))
    t.add("prox-steps-np.int64", P(b, steps=np.int64(5)))
    # the same dense attack on JAX and TensorFlow segmenters (first JAX run: compiles its prox)
    for framework in ("jax", "tf"):
        add = functools.partial(t.add, jax=framework == "jax", tf=framework == "tf", slow=True)
        b = P(prox_case, framework=framework)
        prefix = f"prox-{framework}"
        add(f"{prefix}-basic", b)
        add(f"{prefix}-masked", P(b, masked=True, mask_container=framework))
        add(f"{prefix}-targeted", P(b, targeted=True))
        add(f"{prefix}-empty", P(b, n=0), either("images|inputs"))
        add(f"{prefix}-labels-uint8", P(b, labels_dtype="uint8"))
        add(f"{prefix}-bounds255", P(b, bounds=(0.0, 255.0)))
        add(f"{prefix}-model-raises", P(b, variant="raise"), MIDWAY)
        add(f"{prefix}-restarts", P(b, params=ProxParams(restarts=2, init_lr=0.05)))
        if framework == "tf":
            add(f"{prefix}-float64", P(b, dtype="float64"))
    t.add("prox-jax-float64", P(prox_case, framework="jax", dtype="float64"), x64=True,
          slow=True)  # fmt: skip

    # Foolbox attacks
    for attack in ("L2ALMA", "L1ALMA", "LinfALMAProx"):
        for jax in (False, True):
            prefix = f"fb-{attack}-{'jax' if jax else 'torch'}"
            b = P(foolbox_case, attack, framework="jax" if jax else "torch",
                  steps=5 if jax else 10)  # fmt: skip
            t.slow = jax and attack == "LinfALMAProx"
            _classifier_cases(t, prefix, b, jax=jax)
            t.add(f"{prefix}-epsilons-None", P(b, epsilons=[None, 0.5]), jax=jax)
            t.add(f"{prefix}-epsilon-0", P(b, epsilons=0.0), NO_SUCCESS_NEEDED, jax=jax)
            if jax:
                t.add(f"{prefix}-float64", P(b, dtype="float64"), x64=True)
            if not jax:
                t.add(f"{prefix}-labels-numpy", P(b, container="numpy"),
                      either("labels|criterion"))  # fmt: skip
                t.add(f"{prefix}-labels-list", P(b, container="list"),
                      either("labels|criterion"))  # fmt: skip
            t.slow = False
    for attack in ("L2ALMA", "L1ALMA", "LinfALMAProx"):
        for jax in (False, True):
            b = P(foolbox_case, attack, framework="jax" if jax else "torch",
                  steps=5 if jax else 10, restarts=2, epsilons=(0.0, 0.5, None))  # fmt: skip
            t.add(f"fb-{attack}-{'jax' if jax else 'torch'}-restarts", b, jax=jax,
                  slow=jax and attack == "LinfALMAProx")  # fmt: skip
    t.add("fb-LinfALMAProx-torch-restarts-early_stop", P(foolbox_case, "LinfALMAProx",
          restarts=2, epsilons=(100.0,)))  # fmt: skip
    t.add("fb-L2ALMA-torch-restarts-above-steps", P(foolbox_case, "L2ALMA", restarts=11),
          raises("restarts"))  # fmt: skip
    for attack in ("L1ALMA", "LinfALMAProx"):  # ALMA's and ALMA prox's smoothed max
        t.add(f"fb-{attack}-torch-smooth_max", P(foolbox_case, attack, smooth_max=0.2,
              epsilons=(0.0, 0.5, None)))  # fmt: skip
    for attack in ("L2ALMA", "LinfALMAProx"):
        t.add(f"fb-{attack}-torch-restarts-classes", P(foolbox_case, attack, restarts=2,
              restart_mode="classes", epsilons=(0.0, 0.5, None)))  # fmt: skip
        targeted = P(foolbox_case, attack, restarts=2, restart_mode="classes", targeted=True)
        t.add(f"fb-{attack}-torch-restarts-classes-targeted", targeted, raises("restart_mode"))
        t.add(f"fb-{attack}-torch-first_run_share", P(foolbox_case, attack, restarts=2,
              first_run_share=0.7, epsilons=(0.0, 0.5, None)))  # fmt: skip
    for attack, shape, last in (("CIEDE2000ALMA", (3, 8, 8), (8, 8, 3)),
                                ("SSIMALMA", (1, 12, 12), (12, 12, 1))):  # fmt: skip
        for jax in (False, True):
            prefix = f"fb-{attack}-{'jax' if jax else 'torch'}"
            steps = 30 if attack == "CIEDE2000ALMA" else 10
            if jax:  # JAX compiles each primitive per shape: 3 channels of 12×12, as the JAX
                # distance rows below (SSIM on them needs 8 steps, not 5)
                shape, last = (3, 12, 12), (12, 12, 3)
            b = P(foolbox_case, attack, shape=shape, framework="jax" if jax else "torch",
                  steps=steps, epsilons=(0.0, 0.01, None))  # fmt: skip
            t.add(f"{prefix}-basic", b, jax=jax, slow=jax)
            if jax:
                t.add(f"{prefix}-channels_last", P(b, shape=last, data_format="channels_last"),
                      jax=True, slow=True)  # fmt: skip
                continue
            t.add(f"{prefix}-empty", P(b, n=0))
            t.add(f"{prefix}-targeted", P(b, targeted=True))
            t.add(f"{prefix}-bounds255", P(b, bounds=(0.0, 255.0)))
            t.add(f"{prefix}-model-nan-far", P(b, variant="nan_far"), NO_SUCCESS_NEEDED)
            for dtype in HALF_DTYPES + ("float64",):
                t.add(f"{prefix}-{dtype}", P(b, dtype=dtype))
            t.add(f"{prefix}-requires_grad", P(b, mode="requires_grad"))
            t.add(f"{prefix}-inference_mode", P(b, mode="inference"))
    t.add("fb-CIEDE2000ALMA-torch-gray", P(foolbox_case, "CIEDE2000ALMA"), raises("inputs"))
    t.add("fb-LPIPSALMA-torch-gray", P(foolbox_case, "LPIPSALMA"), raises("inputs"))
    t.add("fb-SSIMALMA-torch-padding-valid", P(foolbox_case, "SSIMALMA", shape=(1, 12, 12),
          padding="valid", epsilons=(0.0, 0.01, None)))  # fmt: skip
    t.add("fb-MSSSIMALMA-torch-small", P(foolbox_case, "MSSSIMALMA", shape=(1, 12, 12)),
          raises("inputs"))  # fmt: skip
    t.add("fb-MSSSIMALMA-jax-small", P(foolbox_case, "MSSSIMALMA", shape=(1, 12, 12),
          framework="jax"), raises("inputs"), jax=True)  # fmt: skip

    # torchattacks ALMA (ℓ2, ℓ1, ℓ∞) and MinimalEnsemble
    for distance in ("l2", "l1", "linf"):
        prefix = f"ta-ALMA-{distance}"
        b = P(torchattacks_case, distance=distance)
        _classifier_cases(t, prefix, b, bounds=False)  # torchattacks: images in [0, 1]
        t.add(f"{prefix}-labels-numpy", P(b, container="numpy"), either("labels"))
        t.add(f"{prefix}-labels-list", P(b, container="list"), either("labels"))
        t.add(f"{prefix}-early_stop-0", P(b, early_stop=0.0),
              either("early_stop") if distance == "linf" else OK)  # fmt: skip
    t.add("ta-ALMA-l2-restarts", P(torchattacks_case, restarts=2))
    t.add("ta-ALMA-linf-mu_init-default", P(torchattacks_case, distance="linf", mu_init=1.0),
          raises("ProxParams", TypeError))  # fmt: skip
    t.add("ta-ALMA-linf-restarts", P(torchattacks_case, distance="linf",
          params=ProxParams(restarts=2)))  # fmt: skip
    t.add("ta-ALMA-l2-restarts-classes", P(torchattacks_case, restarts=2, restart_mode="classes"))
    t.add("ta-ALMA-l1-first_run_share", P(torchattacks_case, distance="l1", restarts=2,
          restart_mode="classes", first_run_share=0.7))  # fmt: skip
    t.add("ta-ALMA-l2-smooth_max", P(torchattacks_case, smooth_max=0.1))
    t.add("ta-ALMA-linf-restarts-classes", P(torchattacks_case, distance="linf",
          params=ProxParams(restarts=2, restart_mode="classes")))  # fmt: skip
    b = P(torchattacks_case, distance="ssim", shape=(1, 12, 12))
    t.add("ta-ALMA-ssim-basic", b)
    t.add("ta-ALMA-ssim-padding-valid", P(b, padding="valid"))
    t.add("ta-ALMA-ssim-padding-same", P(b, padding="same"), raises("padding"))
    for distance in ("l2", "linf"):
        t.add(f"ta-ALMA-{distance}-padding", P(torchattacks_case, distance=distance,
              padding="valid"), raises("padding"))  # fmt: skip
    b = P(torchattacks_case, ensemble=True, steps=5)
    t.add("ta-Ensemble-basic", b)
    t.add("ta-Ensemble-batch1", P(b, n=1))
    t.add("ta-Ensemble-empty", P(b, n=0))
    t.add("ta-Ensemble-targeted", P(b, targeted=True))
    t.add("ta-Ensemble-linf", P(b, members=("linf", "l2"), distance="linf"))
    t.add("ta-Ensemble-K2", P(b, k=2))
    t.add("ta-Ensemble-K1", P(b, k=1), MODEL)
    for labels in ("uint8", "int16"):
        t.add(f"ta-Ensemble-labels-{labels}", P(b, labels_dtype=labels))
    t.add("ta-Ensemble-labels-numpy", P(b, container="numpy"), either("labels"))
    for dtype in HALF_DTYPES + ("float64",):
        t.add(f"ta-Ensemble-{dtype}", P(b, dtype=dtype))
    t.add("ta-Ensemble-deepfool-nan-far", P(b, variant="nan_far", deepfool=True),
          NO_SUCCESS_NEEDED)  # fmt: skip
    t.add("ta-Ensemble-deepfool-nan", P(b, variant="nan", deepfool=True), NAN_MODEL)
    t.add("ta-Ensemble-model-raises", P(b, variant="raise_train"), MIDWAY)
    t.add("ta-Ensemble-model-train", P(b, variant="train"))
    t.add("ta-Ensemble-requires_grad", P(b, mode="requires_grad"))
    t.add("ta-Ensemble-inference_mode", P(b, mode="inference"))

    # alma_plugin.distances.<name>
    for name in ("l1", "l2", "linf", "ciede2000", "ssim", "msssim", "lpips"):
        b = P(distance_case, name)
        heavy = name in ("msssim", "lpips")
        t.add(f"dist-{name}-torch-float32", b)
        t.add(f"dist-{name}-torch-nan-inf", P(b, nan_rows=(1,), inf_rows=(2,)))
        t.add(f"dist-{name}-torch-requires_grad", P(b, mode="requires_grad"))
        if name == "lpips":
            t.add("dist-lpips-jax", P(b, framework="jax"), either("x_adv|PyTorch|torch"),
                  jax=True)  # fmt: skip
            continue
        slow = name in ("ciede2000", "ssim", "msssim")
        t.add(f"dist-{name}-jax-float32", P(b, framework="jax"), jax=True, slow=slow)
        t.add(f"dist-{name}-jax-nan-inf", P(b, framework="jax", nan_rows=(0,), inf_rows=(2,)),
              jax=True, slow=slow)  # fmt: skip
        if heavy:
            continue
        t.add(f"dist-{name}-jax-float64", P(b, framework="jax", dtype="float64"), x64=True,
              slow=slow)  # fmt: skip
        for dtype in HALF_DTYPES + ("float64",):
            t.add(f"dist-{name}-torch-{dtype}", P(b, dtype=dtype))
        t.add(f"dist-{name}-torch-empty", P(b, n=0))
        t.add(f"dist-{name}-torch-eagerpy", P(b, mode="eagerpy"))
        t.add(f"dist-{name}-torch-inference_mode", P(b, mode="inference"))
    t.add("dist-l2-jax-bfloat16", P(distance_case, "l2", framework="jax", dtype="bfloat16"),
          jax=True)  # fmt: skip
    t.add("dist-l2-jax-empty", P(distance_case, "l2", framework="jax", n=0), jax=True)

    # the Lagrangian training attack: lagrangian() on PyTorch and JAX, torchattacks Lagrangian
    for jax in (False, True):
        prefix = f"lagrangian-{'jax' if jax else 'torch'}"
        b = P(lagrangian_case, framework="jax" if jax else "torch")
        _classifier_cases(t, prefix, b, jax=jax, warns=True)
        t.add(f"{prefix}-labels-list", P(b, container="list"), jax=jax)
        t.add(f"{prefix}-labels-out-of-range", P(b, label_offset=3), raises("labels"), jax=jax)
        t.add(f"{prefix}-multiplier-negative", P(b, multiplier=-1.0), raises("multiplier"),
              jax=jax)  # fmt: skip
        if jax:
            t.add(f"{prefix}-float64", P(b, dtype="float64"), x64=True)
    b = P(lagrangian_case, torchattacks=True)
    _classifier_cases(t, "ta-Lagrangian", b, bounds=False)
    t.add("ta-Lagrangian-decay-0", P(b, decay=0.0), raises("decay"))
    t.add("ta-Lagrangian-seed-None", P(b, attack_seed=None))
    _tensorflow_rows(t)
    return t.rows


def _tensorflow_rows(t: Table) -> None:
    """TensorFlow tensors and models (a linear TF function, Foolbox's ``TensorFlowModel``):
    the rows users hit most, run where TensorFlow is installed (``pip install .[tf]``)."""
    add = functools.partial(t.add, tf=True)
    for distance in ("l2", "l1", "linf"):
        prefix = f"alma-{distance}-tf"
        b = P(alma_case, distance=distance, framework="tf", steps=10)
        add(f"{prefix}-basic", P(b))
        add(f"{prefix}-empty", P(b, n=0))
        add(f"{prefix}-targeted", P(b, targeted=True))
        add(f"{prefix}-K1", P(b, k=1), MODEL)
        add(f"{prefix}-bounds255", P(b, bounds=(0.0, 255.0)))
        add(f"{prefix}-float64", P(b, dtype="float64"))
        add(f"{prefix}-labels-uint8", P(b, labels_dtype="uint8"))
        add(f"{prefix}-labels-list", P(b, container="list"))
        add(f"{prefix}-model-numpy", P(b, variant="numpy"), MODEL)
        add(f"{prefix}-model-nan-far", P(b, variant="nan_far", nan_radius=0.01), NO_SUCCESS_NEEDED)
        add(f"{prefix}-model-raises", P(b, variant="raise"), MIDWAY)
        classes: dict[str, Any] = {"restarts": 2, "restart_mode": "classes"}
        if distance == "linf":  # ALMA prox takes its own params
            classes = {"params": ProxParams(**classes)}
        add(f"{prefix}-restarts-classes", P(b, k=5, **classes))
    for attack in ("L2ALMA", "L1ALMA", "LinfALMAProx"):
        prefix = f"fb-{attack}-tf"
        b = P(foolbox_case, attack, framework="tf", steps=10)
        add(f"{prefix}-basic", P(b))
        add(f"{prefix}-empty", P(b, n=0))
        add(f"{prefix}-targeted", P(b, targeted=True))
        add(f"{prefix}-bounds255", P(b, bounds=(0.0, 255.0)))
        add(f"{prefix}-labels-uint8", P(b, labels_dtype="uint8"))
        add(f"{prefix}-epsilons-None", P(b, epsilons=[None, 0.5]))
    # fb.TensorFlowModel is channels last (Keras' default): the perceptual classes transpose
    for attack, shape in (("CIEDE2000ALMA", (8, 8, 3)), ("SSIMALMA", (12, 12, 1))):
        b = P(foolbox_case, attack, shape=shape, framework="tf",
              steps=30 if attack == "CIEDE2000ALMA" else 10,
              epsilons=(0.0, 0.01, None))  # fmt: skip
        add(f"fb-{attack}-tf-channels_last", b)
        add(f"fb-{attack}-tf-targeted", P(b, targeted=True))
    add("fb-MSSSIMALMA-tf-small", P(foolbox_case, "MSSSIMALMA", shape=(12, 12, 1), framework="tf"),
        raises("inputs"))  # fmt: skip
    add("lagrangian-tf-basic", P(lagrangian_case, framework="tf"))
    for name in ("l1", "l2", "linf", "ciede2000", "ssim", "msssim"):
        add(f"dist-{name}-tf-float32", P(distance_case, name, framework="tf"))
        add(f"dist-{name}-tf-nan-inf", P(distance_case, name, framework="tf", nan_rows=(0,),
                                         inf_rows=(2,)))  # fmt: skip


ROWS = table()


def _marks(needs: str | None, slow: bool) -> list[Any]:
    marks: list[Any] = [pytest.mark.slow] if slow else []
    if needs == "jax" and not HAS_JAX:
        marks.append(pytest.mark.skip(reason="jax is not installed"))
    if needs == "tf" and not HAS_TF:
        marks.append(pytest.mark.skip(reason="tensorflow is not installed (the tf extra)"))
    return marks


def test_table_is_well_formed() -> None:
    ids = [case.id for case, _, _ in ROWS]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    assert len(ROWS) > 250
    # every invariant has its name ("outcome: ...") and the checker says where it is checked
    checker = (Path(__file__).parent / "contract" / "checker.py").read_text()
    for invariant in INVARIANTS:
        name = invariant.split(":")[0]
        assert f"# {name}" in checker or f"_check_{name}" in checker, name


def _keywords(entry: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of an entry point (constructor) and their defaults."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(entry).parameters.values()
    return {p.name: p.default for p in parameters if p.kind in kinds and p.name != "model"}


#: Keywords whose None in alma() / torchattacks' ALMA means the Foolbox class's default (the
#: Foolbox class has one distance; for the others the keyword does not apply; ``steps``: ALMA's
#: 1000 or, for "linf", ALMA prox's 500, test_steps_default_follows_the_algorithm).
NONE_MEANS_DEFAULT = {"padding", "steps"}


def test_entry_points_share_their_keywords() -> None:
    """The same thing has the same name in alma(), the Foolbox ALMA classes and torchattacks'
    ALMA: every keyword of a Foolbox ALMA class is one of alma() and of torchattacks' ALMA,
    with the same default, and every keyword of torchattacks' ALMA is one of alma()."""
    import alma_plugin.foolbox as afb
    from alma_plugin import alma
    from alma_plugin.foolbox.alma import ALMAAttack
    from alma_plugin.torchattacks import ALMA

    functional, torchattacks = _keywords(alma), _keywords(ALMA)
    classes = [getattr(afb, name) for name in afb.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, ALMAAttack)]
    assert len(classes) >= 6
    for cls in classes:
        for name, default in _keywords(cls).items():
            for entry, keywords in (("alma()", functional), ("torchattacks ALMA", torchattacks)):
                assert name in keywords, f"{cls.__name__}({name}=...) is missing from {entry}"
                same = keywords[name] == default
                assert same or (keywords[name] is None and name in NONE_MEANS_DEFAULT), (
                    f"{cls.__name__}({name}={default!r}) but {entry} has {keywords[name]!r}"
                )
    for name, default in torchattacks.items():
        assert name in functional, f"ALMA({name}=...) is missing from alma()"
        assert functional[name] == default, f"ALMA({name}={default!r}): alma() differs"


def test_steps_default_follows_the_algorithm() -> None:
    """``steps`` left at its default runs the same budget in every entry point of an algorithm:
    ALMA's 1000 and ALMA prox's 500 (its α = 0.8 is the thesis' value for 500 steps), whether
    ALMA prox is asked for as alma_prox(), alma(distance="linf"), LinfALMAProx or ALMA(model,
    "linf") (the latter two ran ALMA's 1000)."""
    import inspect

    from alma_plugin import alma, alma_prox
    from alma_plugin.core.params import ALMA_STEPS, PROX_STEPS
    from alma_plugin.foolbox import L2ALMA, LinfALMAProx
    from alma_plugin.torchattacks import ALMA

    assert LinfALMAProx().steps == PROX_STEPS
    assert inspect.signature(alma_prox).parameters["steps"].default == PROX_STEPS
    assert L2ALMA().steps == ALMA_STEPS
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    calls = []
    counting = torch.nn.Sequential(torch.nn.Identity(), model).eval()
    counting[0].register_forward_hook(lambda *_: calls.append(1))
    for name in ("linf", "inf"):
        assert int(alma(model, x, y, distance=name).steps_run) == PROX_STEPS
        calls.clear()
        ALMA(counting, name)(x, y)
        assert len(calls) == PROX_STEPS
    assert int(alma(model, x, y, distance="l2", early_stop=None).steps_run) == ALMA_STEPS


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case.id, marks=_marks(needs, slow)) for case, needs, slow in ROWS],
)
def test_contract(case: Case) -> None:
    check(case)


def _on_cuda(case: Case) -> Case:
    """The row as it reads on a CUDA device: ``cuda_graphs=True`` is refused on the CPU and
    runs there (the Lagrangian attack has no such option on either)."""
    lagrangian = case.id.startswith(("lagrangian-", "ta-Lagrangian-"))
    if case.id.endswith("-cuda_graphs-cpu") and not lagrangian:
        return dataclasses.replace(case, expect=OK)
    return case


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.id) for case, needs, _ in ROWS if needs is None]
)
def test_contract_on_cuda(case: Case) -> None:
    """The table's CUDA column: every PyTorch row with the caller's tensors and models on the
    GPU, the same invariants (results on the caller's device among them)."""
    with on_device("cuda"):
        check(_on_cuda(case))


#: Rows for a caller whose labels (and masks) stayed on the CPU while the inputs and the model
#: are on the GPU: the entry points move them, as torchattacks does with ``labels.to(device)``.
CPU_LABEL_ROWS = [
    case
    for case, needs, _ in ROWS
    if needs is None
    and any(case.id.endswith(end) for end in ("-basic", "-targeted", "-masked", "-labels-uint8"))
    and not case.id.startswith("dist-")
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CPU_LABEL_ROWS])
def test_contract_on_cuda_with_labels_on_the_cpu(case: Case) -> None:
    with on_device("cuda", labels_device="cpu"):
        check(_on_cuda(case))
