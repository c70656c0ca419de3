"""Robust-accuracy evaluation of one batch: one entry point over every attack.

``EVALUATORS`` maps an attack name to
``(model, x, y, config, *, seed, indices, log_file) -> AttackResult``; :func:`evaluate` wraps a
smoothed model when asked and re-scores ``x_adv`` (several times for randomized models, since
one evaluation overstates their robustness). The dataset-level run (chunks, resume, files) is
:func:`robustmaxup.attacks.runner.evaluate_dataset`.

Seeding (``seed`` and each example's ``index``, see :data:`robustmaxup.runtime.seeds.STREAMS`):

* per example, independent of the batch: PGD's random start and the smoothing noise the
  smoothed model draws during PGD and its clean/final predictions (stream ``attack.example``,
  one generator per example), and the re-scoring noise of ``x_adv`` (stream
  ``attack.rescore``, one generator per example);
* per call (AutoAttack only): ``pyautoattack`` takes one integer seed per call and draws its
  random starts from torch's global RNG, reseeded with it for every attack and every inner
  batch of still-robust examples, so an example's start depends on which examples share the
  call and their order; the smoothing noise of a smoothed model attacked by AutoAttack comes
  from one generator per call. Both are seeded by stream ``attack.batch`` from the call's first
  example index. AutoAttack's ``x_adv`` (and so its verdicts) therefore depend on the batch;
  the re-scoring of a given ``x_adv`` does not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from robustmaxup.attacks._core import NORMS, check_unit_range, random_init, work_dtype
from robustmaxup.attacks.autoattack import check_aa_options, run_autoattack
from robustmaxup.attacks.pgd import STEP_RATIO, pgd
from robustmaxup.attacks.result import AttackResult, predict, rescore
from robustmaxup.attacks.smoothed import SoftSmoothed, per_example_noise
from robustmaxup.models.state import check_model_input, model_state
from robustmaxup.registry import Registry
from robustmaxup.runtime.checks import FieldError, check_choice, check_int, check_positive, check_range
from robustmaxup.runtime.limits import MAX_NOISE_DRAWS, MAX_RESCORES, MAX_STEPS
from robustmaxup.runtime.seeds import check_seed, make_generator, stream_generator, stream_seed
from robustmaxup.runtime.text import warn_once

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
        sigma, copies: if ``sigma`` is set, attack the soft smoothed classifier
            :class:`SoftSmoothed` (``copies`` noise draws per forward: Salman et al.'s m;
            ``--copies``, as in training).
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
    copies: int = 32
    rescores: int | None = None

    @property
    def randomized(self) -> bool:
        return self.sigma is not None

    @property
    def n_rescores(self) -> int:
        if self.rescores is not None:
            return self.rescores
        return RANDOMIZED_RESCORES if self.randomized else 1

    def as_used(self) -> dict[str, Any]:
        """The settings as the run uses them, for records: ``rescores`` and PGD's default
        ``step_size`` resolved (passing the default explicitly is the same run), and the fields
        it does not use None (``steps``/``step_size`` are PGD's, ``version``/``attacks``
        AutoAttack's, ``copies`` the smoothed model's)."""
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        d["rescores"] = self.n_rescores
        if self.step_size is None:  # an unchecked record with odd values keeps its None
            with contextlib.suppress(TypeError, ZeroDivisionError):
                d["step_size"] = STEP_RATIO * self.eps / self.steps
        unused = ("steps", "step_size") if self.attack == "autoattack" else ("version", "attacks")
        if not self.randomized:
            unused += ("copies",)      # noise draws of the smoothed model only
        return {**d, **dict.fromkeys(unused)}


Evaluator = Callable[..., AttackResult]
EVALUATORS: Registry[Evaluator] = Registry("attack")


def example_generators(seed: int, stream: str, indices: Sequence[int],
                       device: torch.device | str) -> list[torch.Generator]:
    """One generator per example on ``device``: ``stream_generator(seed, stream, index)``."""
    return [stream_generator(seed, stream, int(i), device=device) for i in indices]


def batch_seed(seed: int, indices: Sequence[int], use: int) -> int:
    """The seed of randomness drawn once per call, not per example (AutoAttack): stream
    ``attack.batch`` refined by the call's first example index and ``use`` (0: pyautoattack's
    seed, 1: the smoothing noise during AutoAttack)."""
    return stream_seed(seed, "attack.batch", int(indices[0]) if len(indices) else 0, use)


@EVALUATORS.register("autoattack")
def _evaluate_autoattack(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *,
                         seed: int, indices: Sequence[int],
                         log_file: str | os.PathLike | None = None) -> AttackResult:
    return run_autoattack(model, x, y, eps=config.eps, norm=config.norm, version=config.version,
                          attacks=list(config.attacks) if config.attacks else None,
                          batch_size=config.batch_size, seed=batch_seed(seed, indices, 0) % 2**31,
                          log_file=log_file)


@EVALUATORS.register("pgd")
def _evaluate_pgd(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *, seed: int,
                  indices: Sequence[int], log_file: str | os.PathLike | None = None) -> AttackResult:
    """PGD from a random start, everything random drawn per example: example ``i``'s generator
    (stream ``attack.example``) gives, in this order, the noise of its clean prediction, its
    random start, the noise of each PGD step and that of its final prediction (the noise only
    for a randomized model)."""
    check_unit_range(x)
    gens = example_generators(seed, "attack.example", indices, x.device)
    bs = config.batch_size
    with model_state(model, train=False):
        clean = predict(model, x, bs, gens) == y
    start = time.perf_counter()
    parts = []
    for i in range(0, len(x), bs):
        xb, rows = x[i:i + bs], gens[i:i + bs]
        x_work = xb.detach().to(work_dtype(xb))
        delta = torch.cat([random_init(x_work[j:j + 1], config.eps, config.norm, g)
                           for j, g in enumerate(rows)])
        with per_example_noise(model, rows):
            parts.append(pgd(model, xb, y[i:i + bs], eps=config.eps, norm=config.norm,
                             steps=config.steps, step_size=config.step_size, delta_init=delta,
                             check_inputs=False))  # checked once in evaluate
    x_adv = torch.cat(parts)
    with model_state(model, train=False):
        still = predict(model, x_adv, bs, gens) == y
    return AttackResult(x_adv=x_adv, clean=clean, stages={"pgd": clean & still},
                        seconds={"pgd": time.perf_counter() - start})


def check_config(config: AttackConfig, image_shape: tuple[int, ...]) -> None:
    """FieldError (naming the config field) for an unknown attack/norm/version, a count below
    one or above its cap (:mod:`robustmaxup.runtime.limits`: ``steps``, ``copies``, ``rescores``), or
    an eps that is absurd for the norm."""
    check_choice("attack", config.attack, EVALUATORS.names())
    if isinstance(config.attacks, str):
        raise FieldError("attacks", f"must be a list of attack names, e.g. ({config.attacks!r},), got the "
                                    f"string {config.attacks!r}")
    if config.attack == "autoattack":
        check_aa_options(config.norm, config.version,
                         list(config.attacks) if config.attacks else None)
    else:
        check_choice("norm", config.norm, NORMS)
    d = 1
    for s in image_shape:
        d *= s
    limit = {"Linf": 1.0, "L2": d ** 0.5, "L1": float(d)}[config.norm]
    if isinstance(config.eps, str):
        raise FieldError("eps", f"must be a number, got the string {config.eps!r}"
                                f"{'; e.g. 8 / 255' if '/' in config.eps else ''}")
    check_range("eps", config.eps)  # a number (not None, not NaN); its bounds come next
    if not 0 < config.eps <= limit:
        raise FieldError("eps", f"must lie in (0, {limit:.4g}] for {config.norm} on "
                                f"{'x'.join(map(str, image_shape))} images in [0, 1], got {config.eps:.6g}")
    if config.sigma is not None:
        check_positive("sigma", config.sigma)
    check_int("batch_size", config.batch_size, minimum=1)
    check_int("steps", config.steps, minimum=1, maximum=MAX_STEPS)
    check_int("copies", config.copies, minimum=1, maximum=MAX_NOISE_DRAWS)
    if config.rescores is not None:
        check_int("rescores", config.rescores, minimum=1, maximum=MAX_RESCORES)
    if config.step_size is not None:
        check_positive("step_size", config.step_size)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, *, seed: int,
             indices: Sequence[int] | None = None,
             log_file: str | os.PathLike | None = None) -> AttackResult:
    """Attack ``model`` (or its soft smoothed version) on ``x`` and re-score ``x_adv``.

    All randomness is a function of ``seed`` and the examples' ``indices`` (see the module
    docstring): PGD's starts and smoothing noise and the re-scoring noise are drawn per example,
    so an example's PGD result does not depend on the batch it is evaluated in; AutoAttack is
    seeded once per call from ``indices[0]``.

    Args:
        model: classifier on [0, 1] pixels; x: ``[B, C, H, W]`` in [0, 1]; y: ``[B]``.
        config: :class:`AttackConfig`; seed: the run's seed.
        indices: each example's identity for seeding (its dataset index); default ``0..B-1``.
        log_file: AutoAttack's log is appended here.

    Returns:
        :class:`AttackResult` with ``rescored`` of shape ``[config.n_rescores, B]``.

    Example::

        res = evaluate(model, x, y, AttackConfig(eps=8/255, attack="pgd"), seed=0)
        robust_accuracy = res.robust.float().mean().item()
    """
    check_config(config, tuple(x.shape[1:]))
    check_model_input(model, x)
    seed = check_seed(seed)
    idx = list(range(len(x))) if indices is None else [int(i) for i in indices]
    if len(idx) != len(x):
        raise FieldError("indices", f"must name one index per example: {len(x)} examples but {len(idx)} indices")
    target = model
    if config.randomized:
        gen = make_generator(batch_seed(seed, idx, 1), x.device)
        target = SoftSmoothed(model, config.sigma, config.copies, generator=gen)
        if config.attack == "autoattack" and config.version != "rand":
            warn_once(log, f"attacking a randomized (smoothed) model with AutoAttack version "
                           f"{config.version!r}; version 'rand' (EOT) is meant for randomized models")
    result = EVALUATORS.get(config.attack)(target, x, y, config, seed=seed, indices=idx,
                                           log_file=log_file)
    result.rescored = rescore(target, result.x_adv, y, repeats=config.n_rescores,
                              batch_size=config.batch_size,
                              generators=example_generators(seed, "attack.rescore", idx, x.device))
    if not config.randomized and not torch.equal(result.rescored[0] | ~result.attack_robust,
                                                 torch.ones_like(result.clean)):
        log.warning("re-scoring x_adv disagrees with the attack's verdict on %d examples "
                    "(non-deterministic model or kernels?); counting the worst case",
                    int((~result.rescored[0] & result.attack_robust).sum()))
    return result
