"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks") through the ``pyautoattack`` package (0.2.0), thinly adapted.

The adapter forces ``eval()`` (restored afterwards), turns off parameter gradients, checks that
inputs lie in [0, 1], keeps the global RNG untouched, copies the package's log (logger
``auto-attack``) into a file, and runs the attacks of the chosen version one after the other on
the examples that are still robust — exactly what ``run_standard_evaluation`` does internally —
so that the robust flags after every attack are known per example. Robust accuracy is the
POINTWISE worst case over attacks: an example is robust only if it survives every attack.

For a deterministic model this equals one ``run_standard_evaluation`` call bit for bit. For a
randomized one (version ``rand``, a smoothed classifier) each attack's call re-runs the package's
own clean check, so the clean prediction is drawn 1 + (number of attacks) times instead of once:
a clean misprediction in any draw counts as broken by that attack. Robust accuracy can only be
lower (pessimistic), and the per-attack ``stages`` attribution carries that noise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from robustmaxup.attacks._core import check_unit_range
from robustmaxup.attacks.result import AttackResult, predict
from robustmaxup.errors import UserError
from robustmaxup.models.state import input_dtype, model_state
from robustmaxup.runtime.checks import FieldError, check_choice, check_int
from robustmaxup.runtime.text import warn_once

log = logging.getLogger(__name__)

AA_NORMS = ("Linf", "L2", "L1")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")



def check_aa_options(norm: str, version: str, attacks: list[str] | None) -> None:
    """FieldError (field ``norm``, ``version`` or ``attacks``) for options AutoAttack lacks."""
    check_choice("norm", norm, AA_NORMS)
    check_choice("version", version, AA_VERSIONS)
    if version == "custom" and not attacks:
        raise FieldError("attacks", "must list the attacks of version 'custom', e.g. apgd-ce apgd-t")
    if attacks and version != "custom":
        raise FieldError("version", f"must be 'custom' with a list of attacks, got {version!r}")
    for name in attacks or ():
        check_choice("attacks", name, AA_ATTACKS)


class _Forward(logging.Handler):
    """Passes pyautoattack's warnings on to our logger, each distinct one once per process (its
    randomized-defense check warns again for every attack and every chunk we run)."""

    def emit(self, record: logging.LogRecord) -> None:
        warn_once(log, f"warning from AutoAttack: {record.getMessage()}")


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


class _Cast(nn.Module):
    """``model`` fed in ``dtype`` and answering in float32: the package works in float32 (its
    inputs and ``x_adv`` too), the model may not (a float64 model runs in float64)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype)).float()


def _in_dtype(model: nn.Module) -> nn.Module:
    dtype = input_dtype(model)
    return model if dtype == torch.float32 else _Cast(model, dtype)


#: the fewest classes each attack's loss works with: DLR divides by the gap between the top logit
#: and the third (untargeted) or the mean of the third and fourth (targeted)
_MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}


def _fit_target_classes(adversary: Any, x: Tensor) -> None:
    """Fit the attacks to the model's ``K`` classes: the targeted ones aim at the 9 runner-up
    classes (Croce and Hein's setting for 10 or more), and with fewer there are ``K - 1`` to aim
    at (pyautoattack would index past the logits); an attack whose loss needs more classes than
    ``K`` is refused in one line."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):  # a randomized model's draws stay as they were
        classes = adversary.model(x[:1]).shape[-1]
    short = [a for a in adversary.attacks_to_run if _MIN_CLASSES.get(a, 0) > classes]
    if short:
        raise UserError(f"AutoAttack's {short[0]} needs a model with at least {_MIN_CLASSES[short[0]]} "
                        f"classes (its DLR loss compares the top logits); this one has {classes}; leave it "
                        "out of the attack list, or use the pgd attack")
    for name in ("apgd_targeted", "fab"):
        attack = getattr(adversary, name, None)
        if attack is not None and getattr(attack, "n_target_classes", 0) > classes - 1:
            attack.n_target_classes = classes - 1


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
        seed: the package's one seed knob: every attack reseeds torch's global RNG with it for
            every inner batch of still-robust examples (``batch_size`` at a time) and draws that
            batch's random starts from it, so an example's start depends on which examples
            share the call and their order, not on the example alone. The caller's global RNG
            state is restored afterwards.
        log_file: where the package's log is appended (None: not kept).
        configure: called with the ``AutoAttack`` object before running (e.g. to shorten
            ``adversary.apgd.n_iter`` in tests).

    Returns:
        :class:`~robustmaxup.attacks.result.AttackResult` with ``stages`` in the package's
        attack order; ``rescored`` is None (see :func:`~robustmaxup.attacks.result.rescore`).

    Example::

        res = run_autoattack(model, x, y, eps=8/255, version="standard")
        print(res.robust.float().mean())          # pointwise worst case over the 4 attacks
    """
    from pyautoattack import AutoAttack

    check_aa_options(norm, version, attacks)
    if not eps > 0:
        raise UserError(f"eps must be positive, got {eps}")
    check_int("batch_size", batch_size, minimum=1)
    check_unit_range(x)
    with model_state(model, train=False, requires_grad=False), capture_log(log_file), \
            _keep_global_rng(x.device):
        adversary = AutoAttack(_in_dtype(model), attacks=list(attacks) if attacks else None, device=x.device,
                               eps=eps, norm=norm, seed=seed, version=version)
        if configure is not None:
            configure(adversary)
        _fit_target_classes(adversary, x)
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
                x_a, y_a = adversary.run_standard_evaluation(x[idx].float(), y[idx], batch_size=batch_size)
                broken = y_a.to(y.device) != y[idx]
                result.x_adv[idx[broken]] = x_a[broken].to(x.dtype)
                robust[idx[broken]] = False
            result.stages[name] = robust.clone()
            result.seconds[name] = time.perf_counter() - start
            log.debug("robust accuracy after %s: %.2f%%", name, 100 * robust.float().mean().item())
        adversary.attacks_to_run = order
    return result


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
