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

from typing import Any, TypeVar

from robustmaxup.errors import UserError, ref
from robustmaxup.methods.base import Augmentation, Method, WeightPerturbation
from robustmaxup.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
PERTURBATIONS: Registry[type[WeightPerturbation]] = Registry("weight perturbation")
AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")

M = TypeVar("M", bound=type[Method])
P = TypeVar("P", bound=type[WeightPerturbation])
A = TypeVar("A", bound=type[Augmentation])


def register_method(cls: M) -> M:
    """Class decorator: add a :class:`Method` subclass to ``METHODS`` under ``cls.name``."""
    METHODS.register(cls.name)(cls)
    return cls


def register_perturbation(cls: P) -> P:
    """Class decorator: add a :class:`WeightPerturbation` to ``PERTURBATIONS`` under ``cls.name``."""
    PERTURBATIONS.register(cls.name)(cls)
    return cls


def register_augmentation(cls: A) -> A:
    """Class decorator: add an :class:`Augmentation` to ``AUGMENTATIONS`` under ``cls.name``."""
    AUGMENTATIONS.register(cls.name)(cls)
    return cls


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
    return cls(**given)
