"""Training methods, one per file, in the ``METHODS`` registry; weight-perturbation wrappers in
``PERTURBATIONS``; augmentations (what MaxUp maximises over) in ``AUGMENTATIONS``.

Layout: :mod:`~robustmaxup.methods.base` (interfaces), :mod:`~robustmaxup.methods.families`
(shared bases: smoothing, adversarial, mixing), :mod:`~robustmaxup.methods.augment` (noise and
mixing primitives), :mod:`~robustmaxup.methods.registry` (the registries and
:func:`build_method`), then one module per method; :mod:`~robustmaxup.methods.awp` and
:mod:`~robustmaxup.methods.amp` build on :mod:`~robustmaxup.methods.weight_perturbation`.
This package only imports the method modules (which registers them) and re-exports.

Example::

    from robustmaxup.methods import build_method
    method = build_method("maxup", sigma=0.25, copies=4)
"""

from __future__ import annotations

# Importing the method modules registers them.
from robustmaxup.methods import (  # noqa: F401
    amp, awp, consistency, cutmix, gaussian, kmixup, macer, maxup, mixup, pgd_at, smoothadv,
    smoothmix, standard, trades,
)
from robustmaxup.methods.base import (
    Augmentation, LossOutput, Method, WeightPerturbation, soft_cross_entropy,
)
from robustmaxup.methods.families import AdversarialMethod, MixingMethod, SmoothingMethod
from robustmaxup.methods.registry import (
    AUGMENTATIONS, METHODS, PERTURBATIONS, build_method, register_augmentation, register_method,
    register_perturbation,
)

__all__ = [
    "METHODS", "PERTURBATIONS", "AUGMENTATIONS", "Augmentation", "LossOutput", "Method",
    "WeightPerturbation", "SmoothingMethod", "AdversarialMethod", "MixingMethod", "build_method",
    "register_method", "register_perturbation", "register_augmentation", "soft_cross_entropy",
]
