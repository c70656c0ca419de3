"""Robust-accuracy evaluation: one entry point over every attack, used by ``robustmaxup attack``.

``EVALUATORS`` maps an attack name to ``(model, x, y, config, *, seed, log_file) -> AttackResult``;
``evaluate`` wraps a smoothed model when asked and re-scores ``x_adv`` (several times for
randomized models, since one evaluation overstates their robustness).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from robustmaxup.attacks._core import check_norm
from robustmaxup.attacks.autoattack import (
    AttackResult, check_aa_options, check_unit_range, predict, rescore, run_autoattack,
)
from robustmaxup.attacks.pgd import pgd
from robustmaxup.attacks.smoothed import SoftSmoothed
from robustmaxup.errors import UserError
from robustmaxup.models.state import model_state
from robustmaxup.registry import Registry
from robustmaxup.utils import derive_seed, make_generator

log = logging.getLogger(__name__)

RANDOMIZED_RESCORES = 5


@dataclass(frozen=True)
class AttackConfig:
    """What to run. ``attack`` names an entry of :data:`EVALUATORS`.

    Args:
        eps, norm: the threat model (pixel scale).
        attack: ``"autoattack"`` or ``"pgd"``.
        version, attacks: AutoAttack version and custom attack list.
        steps, step_size: PGD settings (step size default ``2.5*eps/steps``).
        batch_size: examples per forward/attack batch.
        sigma, m: if ``sigma`` is set, attack the soft smoothed classifier
            :class:`SoftSmoothed` (``m`` noise draws per forward).
        rescores: re-scorings of ``x_adv``; default 5 for randomized models, else 1.
    """

    eps: float
    attack: str = "autoattack"
    norm: str = "Linf"
    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    steps: int = 10
    step_size: float | None = None
    batch_size: int = 250
    sigma: float | None = None
    m: int = 32
    rescores: int | None = None

    @property
    def randomized(self) -> bool:
        return self.sigma is not None

    @property
    def n_rescores(self) -> int:
        if self.rescores is not None:
            return self.rescores
        return RANDOMIZED_RESCORES if self.randomized else 1


Evaluator = Callable[..., AttackResult]
EVALUATORS: Registry[Evaluator] = Registry("attack")


@EVALUATORS.register("autoattack")
def _evaluate_autoattack(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *,
                         seed: int, log_file: str | os.PathLike | None = None) -> AttackResult:
    return run_autoattack(model, x, y, eps=config.eps, norm=config.norm, version=config.version,
                          attacks=list(config.attacks) if config.attacks else None,
                          batch_size=config.batch_size, seed=seed % 2**31, log_file=log_file)


@EVALUATORS.register("pgd")
def _evaluate_pgd(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *, seed: int,
                  log_file: str | os.PathLike | None = None) -> AttackResult:
    check_unit_range(x)
    generator = make_generator(derive_seed(seed, 0), x.device)
    bs = config.batch_size
    with model_state(model, train=False):
        clean = predict(model, x, bs) == y
    start = time.perf_counter()
    x_adv = torch.cat([
        pgd(model, x[i:i + bs], y[i:i + bs], eps=config.eps, norm=config.norm, steps=config.steps,
            step_size=config.step_size, generator=generator)
        for i in range(0, len(x), bs)
    ])
    with model_state(model, train=False):
        still = predict(model, x_adv, bs) == y
    return AttackResult(x_adv=x_adv, clean=clean, stages={"pgd": clean & still},
                        seconds={"pgd": time.perf_counter() - start})


def check_config(config: AttackConfig, image_shape: tuple[int, ...]) -> None:
    """UserError for an unknown attack/norm/version or an eps that is absurd for the norm."""
    EVALUATORS.get(config.attack)
    if config.attack == "autoattack":
        check_aa_options(config.norm, config.version,
                         list(config.attacks) if config.attacks else None)
    else:
        check_norm(config.norm)
    d = 1
    for s in image_shape:
        d *= s
    limit = {"Linf": 1.0, "L2": d ** 0.5, "L1": float(d)}[config.norm]
    if not 0 < config.eps <= limit:
        raise UserError(f"--eps must lie in (0, {limit:.4g}] for {config.norm} on "
                        f"{'x'.join(map(str, image_shape))} images in [0, 1], got {config.eps:.6g}")
    if config.sigma is not None and not config.sigma > 0:
        raise UserError(f"--sigma must be positive, got {config.sigma}")
    if config.m < 1 or config.steps < 1 or config.batch_size < 1:
        raise UserError("--m, --steps and --batch must be positive integers")


def evaluate(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *, seed: int,
             log_file: str | os.PathLike | None = None) -> AttackResult:
    """Attack ``model`` (or its soft smoothed version) on ``x`` and re-score ``x_adv``.

    All randomness (PGD starts, AutoAttack's seed, smoothing noise) is a function of ``seed``
    alone, so a chunked or resumed run reproduces an uninterrupted one chunk by chunk.

    Args:
        model: classifier on [0, 1] pixels; x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]``.
        config: :class:`AttackConfig`; seed: integer seed for this batch of examples.
        log_file: AutoAttack's log is appended here.

    Returns:
        :class:`AttackResult` with ``rescored`` of shape ``[config.n_rescores, B]``.

    Example::

        res = evaluate(model, x, y, AttackConfig(eps=8/255, attack="pgd"), seed=0)
        robust_accuracy = res.robust.float().mean().item()
    """
    check_config(config, tuple(x.shape[1:]))
    target = model
    if config.randomized:
        gen = make_generator(derive_seed(seed, 1), x.device)
        target = SoftSmoothed(model, config.sigma, config.m, generator=gen)
        if config.attack == "autoattack" and config.version != "rand":
            log.warning("attacking a randomized (smoothed) model with AutoAttack version %r; "
                        "version 'rand' (EOT) is meant for randomized models", config.version)
    result = EVALUATORS.get(config.attack)(target, x, y, config, seed=seed, log_file=log_file)
    result.rescored = rescore(target, result.x_adv, y, repeats=config.n_rescores,
                              batch_size=config.batch_size)
    if not config.randomized and not torch.equal(result.rescored[0] | ~result.attack_robust,
                                                 torch.ones_like(result.clean)):
        log.warning("re-scoring x_adv disagrees with the attack's verdict on %d examples "
                    "(non-deterministic model or kernels?); counting the worst case",
                    int((~result.rescored[0] & result.attack_robust).sum()))
    return result
