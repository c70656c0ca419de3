"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks") through the ``pyautoattack`` package (0.2.0), thinly adapted.

The adapter forces ``eval()`` (restored afterwards), turns off parameter gradients, checks that
inputs lie in [0, 1], keeps the global RNG untouched, copies the package's log (logger
``auto-attack``) into a file, and runs the attacks of the chosen version one after the other on
the examples that are still robust — exactly what ``run_standard_evaluation`` does internally —
so that the robust flags after every attack are known per example. Robust accuracy is the
POINTWISE worst case over attacks: an example is robust only if it survives every attack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from robustmaxup.errors import UserError
from robustmaxup.models.state import model_state

log = logging.getLogger(__name__)

AA_NORMS = ("Linf", "L2", "L1")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


@dataclass
class AttackResult:
    """Per-example outcome of an attack evaluation on ``B`` examples.

    Attributes:
        x_adv: adversarial inputs ``[B, C, H, W]`` (``x`` itself where no attack succeeded).
        clean: bool ``[B]``, correctly classified before any attack.
        stages: ordered ``attack name -> bool [B]``: robust after this attack AND every earlier
            one (cumulative, pointwise worst case). The last stage is the overall verdict.
        rescored: bool ``[R, B]`` or None: ``model(x_adv)`` correct in each of ``R`` independent
            re-scorings (several for randomized models, one for deterministic ones).
        seconds: wall time of each attack (same keys as ``stages``).
    """

    x_adv: Tensor
    clean: Tensor
    stages: dict[str, Tensor] = field(default_factory=dict)
    rescored: Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def attack_robust(self) -> Tensor:
        """bool [B]: survived every attack (as judged during the attacks)."""
        return list(self.stages.values())[-1] if self.stages else self.clean

    @property
    def robust(self) -> Tensor:
        """bool [B]: survived every attack and every re-scoring of ``x_adv`` (the verdict)."""
        flags = self.attack_robust
        if self.rescored is not None:
            flags = flags & self.rescored.all(0)
        return flags


def check_unit_range(x: Tensor) -> None:
    """UserError unless every entry of ``x`` lies in [0, 1] (attacks work in pixel space)."""
    lo, hi = x.min().item(), x.max().item()
    if lo < 0.0 or hi > 1.0 or lo != lo or hi != hi:
        raise UserError(f"inputs must lie in [0, 1] (pixels, normalisation inside the model); "
                        f"got values in [{lo:.4g}, {hi:.4g}]")


def check_aa_options(norm: str, version: str, attacks: list[str] | None) -> None:
    if norm not in AA_NORMS:
        raise UserError(f"unknown norm {norm!r} for AutoAttack; choose from {', '.join(AA_NORMS)}")
    if version not in AA_VERSIONS:
        raise UserError(f"unknown AutoAttack version {version!r}; choose from {', '.join(AA_VERSIONS)}")
    if version == "custom" and not attacks:
        raise UserError("version 'custom' needs a list of attacks, e.g. --attacks apgd-ce apgd-t")
    if attacks and version != "custom":
        raise UserError(f"a list of attacks needs version 'custom', not {version!r}")
    for name in attacks or ():
        if name not in AA_ATTACKS:
            raise UserError(f"unknown AutoAttack attack {name!r}; choose from {', '.join(AA_ATTACKS)}")


class _Forward(logging.Handler):
    """Passes pyautoattack's warnings on to our logger (so they reach stderr once)."""

    def emit(self, record: logging.LogRecord) -> None:
        log.handle(record)


@contextlib.contextmanager
def capture_log(path: str | os.PathLike | None) -> Iterator[None]:
    """Copy everything (DEBUG and up) that pyautoattack logs to ``path`` (appended) during the
    block, and pass only its warnings on to our logger (its DEBUG chatter stays in the file).
    The logger's level, handlers and propagation are restored afterwards."""
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate)
    handlers: list[logging.Handler] = [_Forward(logging.WARNING)]
    if path is not None:
        file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(file_handler)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if path is not None else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.level, logger.propagate = saved


@contextlib.contextmanager
def _keep_global_rng(device: torch.device) -> Iterator[None]:
    """pyautoattack reseeds torch's global RNG; give the caller's RNG state back afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """argmax of ``model`` on ``x`` in batches: int64 ``[B]`` (one host sync at the end)."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    batch_size: int = 250,
    seed: int = 0,
    log_file: str | os.PathLike | None = None,
    configure: Callable[[object], None] | None = None,
) -> AttackResult:
    """Run AutoAttack and return per-example flags after every attack.

    Args:
        model: classifier on [0, 1] pixels ``[B, C, H, W] -> [B, K]`` logits (or log-probs).
        x: inputs ``[B, C, H, W]`` in [0, 1]; y: labels ``[B]`` (same device).
        eps: budget; norm: ``"Linf"``, ``"L2"`` or ``"L1"``.
        version: ``"standard"``, ``"plus"``, ``"rand"`` (EOT, for randomized models) or
            ``"custom"`` (with ``attacks``, a list from apgd-ce, apgd-dlr, fab, square, apgd-t,
            fab-t).
        batch_size: examples per attack batch.
        seed: the package's seed (each attack reseeds with it).
        log_file: where the package's log is appended (None: not kept).
        configure: called with the ``AutoAttack`` object before running (e.g. to shorten
            ``adversary.apgd.n_iter`` in tests).

    Returns:
        :class:`AttackResult` with ``stages`` in the package's attack order; ``rescored`` is
        None (see :func:`rescore`).

    Example::

        res = run_autoattack(model, x, y, eps=8/255, version="standard")
        print(res.robust.float().mean())          # pointwise worst case over the 4 attacks
    """
    from pyautoattack import AutoAttack

    check_aa_options(norm, version, attacks)
    if not eps > 0:
        raise UserError(f"eps must be positive, got {eps}")
    check_unit_range(x)
    with model_state(model, train=False, requires_grad=False), capture_log(log_file), \
            _keep_global_rng(x.device):
        adversary = AutoAttack(model, attacks=list(attacks) if attacks else None, device=x.device,
                               eps=eps, norm=norm, seed=seed, version=version)
        if configure is not None:
            configure(adversary)
        order = list(adversary.attacks_to_run)
        logging.getLogger("auto-attack").debug("robustmaxup: %s version, attacks %s, eps %.6g, %s, "
                                               "%d examples", version, order, eps, norm, len(x))
        clean = predict(model, x, batch_size) == y
        result = AttackResult(x_adv=x.detach().clone(), clean=clean)
        robust = clean.clone()
        for name in order:
            start = time.perf_counter()
            idx = robust.nonzero().squeeze(1)
            if idx.numel() > 0:
                adversary.attacks_to_run = [name]
                x_a, y_a = adversary.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
                broken = y_a.to(y.device) != y[idx]
                result.x_adv[idx[broken]] = x_a[broken].to(x.dtype)
                robust[idx[broken]] = False
            result.stages[name] = robust.clone()
            result.seconds[name] = time.perf_counter() - start
            log.debug("robust accuracy after %s: %.2f%%", name, 100 * robust.float().mean().item())
        adversary.attacks_to_run = order
    return result


@torch.no_grad()
def rescore(model: nn.Module, x_adv: Tensor, y: Tensor, *, repeats: int = 1,
            batch_size: int = 250) -> Tensor:
    """Classify ``x_adv`` ``repeats`` times (eval mode): bool ``[repeats, B]``, True = correct.

    For a randomized model (e.g. :class:`~robustmaxup.attacks.SoftSmoothed`) each repeat draws
    fresh randomness; a single evaluation overstates robustness, so report the spread.
    """
    with model_state(model, train=False):
        return torch.stack([predict(model, x_adv, batch_size) == y for _ in range(repeats)])


def autoattack(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "Linf",
               version: str = "standard", attacks: list[str] | None = None,
               batch_size: int = 250, seed: int = 0) -> Tensor:
    """AutoAttack as a plain attack: returns ``x_adv`` ``[B, C, H, W]`` (``x`` where every
    attack failed). See :func:`run_autoattack` for the per-attack flags.

    Example::

        x_adv = autoattack(model, x, y, eps=0.5, norm="L2", version="custom", attacks=["apgd-ce"])
    """
    return run_autoattack(model, x, y, eps=eps, norm=norm, version=version, attacks=attacks,
                          batch_size=batch_size, seed=seed).x_adv
