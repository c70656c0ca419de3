"""The registries of the methods room, and the one way to build a method from its name.

- ``METHODS``: training methods (``robustmaxup train --method``), one module each;
- ``PERTURBATIONS``: weight-perturbation step wrappers (``--awp-gamma``, ``--amp-eps``);
- ``AUGMENTATIONS``: what MaxUp maximises over (``--augment``) and the mixing methods train on.

Method modules import their ``register_*`` decorator from here (never from the package
``__init__``, which imports the method modules to fill these registries).

Example::

    from robustmaxup.methods import build_method
    method = build_method("maxup", sigma=0.25, copies=4)
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from robustmaxup.errors import UserError, did_you_mean, ref
from robustmaxup.methods.base import Augmentation, Method, WeightPerturbation
from robustmaxup.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
PERTURBATIONS: Registry[type[WeightPerturbation]] = Registry("weight perturbation")
AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")

M = TypeVar("M", bound=type[Method])
P = TypeVar("P", bound=type[WeightPerturbation])
A = TypeVar("A", bound=type[Augmentation])


#: how a method's checkpoint is chosen (``Method.family``): noisy accuracy at ``sigma``, PGD
#: robust accuracy, or clean accuracy
FAMILIES = ("smoothing", "adversarial", "standard")
#: the types an option may have: each is one command-line flag
OPTION_TYPES = (bool, int, float, str)


def register_method(cls: M) -> M:
    """Class decorator: add a :class:`Method` subclass (a dataclass) to ``METHODS`` under
    ``cls.name``, after checking what the engine and the command line rely on (UserError naming
    the class otherwise): its own ``name``; a ``family`` of :data:`FAMILIES` (``"smoothing"``
    needs a ``sigma`` option); every option a default (the reference's value) of a type in
    :data:`OPTION_TYPES` (or None)."""
    _check_method(cls)
    METHODS.register(cls.name)(cls)
    return cls


def _check_method(cls: type) -> None:
    where = f"method class {cls.__qualname__}"
    if not dataclasses.is_dataclass(cls) or not issubclass(cls, Method):
        raise UserError(f"{where} must be a @dataclass subclass of robustmaxup.methods.Method")
    if "name" not in vars(cls) or not isinstance(cls.name, str) or not cls.name.isidentifier():
        raise UserError(f"{where} needs its own name, e.g. name: ClassVar[str] = \"mine\" (its "
                        f"registry name: {ref('method', 'mine')})")
    options = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    if isinstance(cls.family, str):  # else a property: checked on each instance (build_method)
        _check_family(where, cls.family, {f.name for f in options})
    for f in options:
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: option {f.name} needs a default (the reference's value)")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is not None and type(default) not in OPTION_TYPES:
            raise UserError(f"{where}: option {f.name} has a {type(default).__name__} default; an "
                            f"option is one flag of type {', '.join(t.__name__ for t in OPTION_TYPES)}")


def register_perturbation(cls: P) -> P:
    """Class decorator: add a :class:`WeightPerturbation` to ``PERTURBATIONS`` under ``cls.name``."""
    PERTURBATIONS.register(cls.name)(cls)
    return cls


def register_augmentation(cls: A) -> A:
    """Class decorator: add an :class:`Augmentation` to ``AUGMENTATIONS`` under ``cls.name``."""
    AUGMENTATIONS.register(cls.name)(cls)
    return cls


def _check_family(where: str, family: Any, options: set[str]) -> None:
    if family not in FAMILIES:
        raise UserError(f"{where}: family must be one of {', '.join(FAMILIES)}, got {family!r}"
                        f"{did_you_mean(family, FAMILIES)}")
    if family == "smoothing" and "sigma" not in options:
        raise UserError(f"{where}: a smoothing method needs a sigma option (its noise level, at which "
                        "checkpoints are chosen by noisy accuracy)")


def _flags(names: list[str]) -> str:
    return ", ".join(ref(k) for k in names)


def build_method(name: str, **hparams: Any) -> Method:
    """Instantiate method ``name``; ``None`` values mean "use the method's default".
    A hyper-parameter the method does not take is a UserError naming it (the flag on the
    command line)."""
    cls = METHODS.get(name)
    given = {k: v for k, v in hparams.items() if v is not None}
    unknown = sorted(set(given) - set(cls.hparam_names()))
    if unknown:
        raise UserError(
            f"method {name!r} does not take {_flags(unknown)}; its options: "
            + (_flags(cls.hparam_names()) or "none")
        )
    method = cls(**given)
    if not isinstance(getattr(type(method), "family", ""), str):  # a property: this instance's
        _check_family(f"method {name}", method.family, set(cls.hparam_names()))
    return method
