"""Every hyperparameter as a keyword of the entry points (:func:`takes_params`), with errors
that name the class the user called and hint at other attacks' names for our keywords."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar, get_type_hints

from .prox_params import refuse_for_linf

__all__ = ["takes_params"]

R = TypeVar("R")


#: Other attacks' keywords (Foolbox, torchattacks, adversarial-library) for ours.
_PEER_KEYWORDS = {
    "max_iter": "steps",
    "num_steps": "steps",
    "iterations": "steps",
    "lr": "init_lr",
    "step_size": "init_lr",
    "stepsize": "init_lr",
    "alpha": "init_lr",  # PGD's step size (the Lagrangian attack's α is init_lr)
    "random_start": "restarts",
    "n_restarts": "restarts",
    "norm": "distance",  # torchattacks' FAB and Square, adversarial-library's FMN
}
#: Where a peer keyword is also ours with another meaning (ALMA's α), the hint says whose.
_PEER_MEANINGS = {
    "alpha": "PGD's name for the step size; alma()'s alpha is the multiplier's EMA coefficient"
}
_NO_BUDGET = "a minimal attack has no ε budget: early_stop=ε stops once every sample is below it"


def _hint(keyword: str, accepted: list[str], no_budget: str = _NO_BUDGET) -> str:
    """What an unknown keyword may have meant: another attack's name for one of ours, or a
    close spelling (cutoff 0.8: "inti_lr" and "step", not "eps" for "steps"); ``no_budget``
    answers "eps" (a params class's ``NO_BUDGET``, where it differs from a minimal attack's)."""
    if keyword in ("eps", "epsilon"):
        return f" ({no_budget})"
    ours = _PEER_KEYWORDS.get(keyword)
    if ours in accepted:
        whose = _PEER_MEANINGS.get(keyword, "other attacks' name for it")
        return f" (did you mean {ours!r}? {keyword!r} is {whose})"
    close = difflib.get_close_matches(keyword, accepted, n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close else ""


def takes_params(
    cls: type[Any],
    *,
    alternative: type[Any] | None = None,
    alternative_if: Callable[[dict[str, Any]], bool] | None = None,
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give an entry point every field of ``cls`` as a keyword-only argument.

    The decorated callable declares ``params: cls | None = None``; the decorator adds one
    keyword per field of ``cls``, with its type and its default (so ``inspect.signature``,
    ``help()`` and notebook completion show every hyperparameter and its value, while the value
    is written once, in ``cls``), and hands the callable one validated ``params`` object:
    ``params`` (or ``cls()``) with the keywords given replacing its fields. An ``alternative``
    params class (ALMA prox's, for ``distance="linf"``) is passed through as is; hyperparameter
    keywords of ``cls`` given with it are refused. With an ``alternative``, a call that gives
    neither ``params`` nor a keyword gets ``params=None`` (the callee resolves it per task), so
    a keyword given at its default value is still seen as given. ``alternative_if(arguments)``
    (the call's bound arguments) says when a call is for the alternative's task: keywords of
    ``cls`` are then refused before ``cls`` checks them against its own rules.
    """
    names = [f.name for f in fields(cls)]
    no_budget = getattr(cls, "NO_BUDGET", _NO_BUDGET)

    def decorate(function: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(function)
        if "params" not in signature.parameters:
            raise TypeError(f"{function.__qualname__} must declare a params argument")
        types = get_type_hints(cls)
        extra = [
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=types[f.name]
            )
            for f in fields(cls)
        ]
        owner = function.__qualname__.replace(".__init__", "")
        accepted = [*signature.parameters, *names]
        positional = [
            p
            for p in signature.parameters.values()
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        is_init = function.__name__ == "__init__"
        # The first keyword-only argument, for the error on too many positional ones.
        keyword_only = [
            p.name
            for p in signature.parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "params"
        ]
        example = [*keyword_only, *names][0]

        def caller(args: tuple[Any, ...]) -> str:
            """The name the user wrote: the class called (a subclass of the method's owner,
            e.g. L2ALMA for ALMAAttack.__init__), else the function."""
            return f"{type(args[0]).__name__}()" if is_init and args else f"{owner}()"

        def check_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            """Python's own errors would name the decorated method's owner (a base class such
            as ALMAAttack or _SSIMFamily) and count the ``params`` the wrapper passes on."""
            unknown = [k for k in kwargs if k not in accepted or k == "self"]
            if unknown:
                hint = _hint(unknown[0], accepted[int(is_init) :], no_budget)
                raise TypeError(
                    f"{caller(args)} got an unexpected keyword argument {unknown[0]!r}{hint}"
                )
            if len(args) > len(positional):
                skip = int(is_init)  # self
                raise TypeError(
                    f"{caller(args)} takes {len(positional) - skip} positional argument(s) but "
                    f"{len(args) - skip} were given; the others are keyword-only, e.g. "
                    f"{example}=..."
                )

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            check_call(args, kwargs)
            given = {name: kwargs.pop(name) for name in names if name in kwargs}
            base = kwargs.pop("params", None)
            if alternative is not None and isinstance(base, alternative):
                if given:
                    raise TypeError(
                        f"{owner} got params={alternative.__name__}(...) and the "
                        f"{cls.__name__} keyword(s) {sorted(given)}: set them in the "
                        f"{alternative.__name__} instead"
                    )
                kwargs["params"] = base
                return function(*args, **kwargs)
            if given and alternative_if is not None:
                if alternative_if(signature.bind_partial(*args, **kwargs).arguments):
                    refuse_for_linf(given)
            if alternative is not None and base is None and not given:
                # Nothing asked for: the callee picks the defaults of its task (ProxParams()
                # for distance="linf"), and can tell an explicit keyword from a default.
                kwargs["params"] = None
                return function(*args, **kwargs)
            if base is not None and not isinstance(base, cls):
                expected = cls.__name__ + (f" or {alternative.__name__}" if alternative else "")
                article = "an" if expected[0] in "AEIOU" else "a"  # as alma()'s "an ALMAParams"
                raise TypeError(f"params must be {article} {expected} or None, got {base!r}")
            kwargs["params"] = replace(base, **given) if base is not None else cls(**given)
            return function(*args, **kwargs)

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), *extra]
        )
        return wrapper

    return decorate
