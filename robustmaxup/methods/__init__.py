"""Training methods, one per file, in the ``METHODS`` registry; weight-perturbation wrappers in
``PERTURBATIONS``; augmentations (what MaxUp maximises over) in ``AUGMENTATIONS``.

Example::

    from robustmaxup.methods import build_method
    method = build_method("maxup", sigma=0.25, m=4)
"""

from __future__ import annotations

from typing import Any

from robustmaxup.errors import UserError
from robustmaxup.methods.augment import AUGMENTATIONS, Augmentation
from robustmaxup.methods.base import LossOutput, Method, WeightPerturbation, soft_cross_entropy
from robustmaxup.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
PERTURBATIONS: Registry[type[WeightPerturbation]] = Registry("weight perturbation")


def register_method(cls: type[Method]) -> type[Method]:
    METHODS.register(cls.name)(cls)
    return cls


def build_method(name: str, **hparams: Any) -> Method:
    """Instantiate method ``name``; ``None`` values mean "use the method's default".
    A hyper-parameter the method does not take is a UserError naming the flag."""
    cls = METHODS.get(name)
    given = {k: v for k, v in hparams.items() if v is not None}
    unknown = sorted(set(given) - set(cls.hparam_names()))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise UserError(
            f"method {name!r} does not take {flags}; its options: "
            + (", ".join("--" + k.replace("_", "-") for k in cls.hparam_names()) or "none")
        )
    return cls(**given)


# Importing the method modules registers them.
from robustmaxup.methods import gaussian, maxup, standard, smoothadv, smoothmix, consistency, macer, pgd_at, trades, awp, amp, mixup, cutmix, kmixup  # noqa: E402,F401,E501

__all__ = [
    "METHODS", "PERTURBATIONS", "AUGMENTATIONS", "Augmentation", "LossOutput", "Method",
    "WeightPerturbation", "build_method", "register_method", "soft_cross_entropy",
]
