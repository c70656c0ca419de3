"""Stateless adversarial attacks: ``attack(model, x, y, *, eps, ...) -> x_adv``.

One algorithm per file; all projected-gradient attacks share the core in ``_core.py`` (one PGD
implementation in the package). ``ATTACKS`` maps names to attack functions
``(model, x, y, *, eps, ...) -> x_adv``; ``EVALUATORS`` maps the names the CLI accepts to
evaluators returning per-example flags (:class:`AttackResult`), and :func:`evaluate` runs one on
a batch; :func:`evaluate_dataset` runs a whole dataset (chunks, resume, the files of
``robustmaxup attack``).
The AutoAttack function is ``robustmaxup.attacks.autoattack.autoattack`` (also
``ATTACKS.get("autoattack")``); its per-attack form is :func:`run_autoattack`.

Example::

    from robustmaxup.attacks import pgd, smooth_pgd, ATTACKS
    x_adv = pgd(model, x, y, eps=8/255, norm="Linf", steps=10)
"""

from __future__ import annotations

from typing import Callable

from robustmaxup.attacks._core import LOSSES, NORMS, margin_loss
from robustmaxup.attacks.autoattack import autoattack as _autoattack
from robustmaxup.attacks.autoattack import run_autoattack
from robustmaxup.attacks.evaluation import EVALUATORS, AttackConfig, evaluate
from robustmaxup.attacks.pgd import pgd
from robustmaxup.attacks.result import AttackResult, predict, rescore
from robustmaxup.attacks.runner import AttackPaths, AttackSummary, ChunkRecord, evaluate_dataset
from robustmaxup.attacks.smooth_pgd import smooth_pgd
from robustmaxup.attacks.smoothed import SoftSmoothed, soft_smoothed_log_probs
from robustmaxup.registry import Registry

#: name -> attack function ``(model, x, y, *, eps, ...) -> x_adv``
ATTACKS: Registry[Callable] = Registry("attack")
ATTACKS.register("pgd")(pgd)
ATTACKS.register("smooth_pgd")(smooth_pgd)
ATTACKS.register("autoattack")(_autoattack)

__all__ = [
    "ATTACKS", "AttackConfig", "AttackPaths", "AttackResult", "AttackSummary", "ChunkRecord",
    "EVALUATORS", "evaluate", "evaluate_dataset", "predict", "rescore",
    "run_autoattack", "LOSSES", "NORMS", "SoftSmoothed", "margin_loss", "pgd", "smooth_pgd",
    "soft_smoothed_log_probs",
]
