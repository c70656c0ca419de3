"""What the methods cost, counted exactly with forward hooks: examples through the network per
step (the adversarial smoothing methods do no redundant forward), the declared
``Method.cost()`` that equal-budget comparisons use, and how a loader batch becomes optimiser
steps (``step_structure``: the reference code's chunks, or one joint step)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustmaxup.checkpoints import build_model_for
from robustmaxup.methods import build_method
from robustmaxup.runtime.dist import Dist
from robustmaxup.train import TrainConfig, TrainState, train_batch
from robustmaxup.train.state import Run

B, M, STEPS = 8, 3, 2


def _count(name: str, **hp) -> tuple[int, float]:
    """(examples forwarded, declared-cost units: 3 per example with grad, 1 without) per example."""
    method = build_method(name, **hp)
    method.setup(num_classes=10)
    model = build_model_for("digits_cnn", "digits").train()
    seen = []
    model.net.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].shape[0], torch.is_grad_enabled())))
    x, y = torch.rand(B, 1, 8, 8), torch.randint(0, 10, (B,))
    prepared = method.prepare(model, x, y, generator=torch.Generator().manual_seed(0))
    method.loss(model, prepared).loss.backward()
    return sum(n for n, _ in seen), sum(n * (3 if grad else 1) for n, grad in seen) / B


COUNTS = [
    # Gaussian: one forward of the noisy batch.
    ("gaussian", {}, B),
    # MaxUp: m copies scored without grad, then the B worst copies trained.
    ("maxup", {"copies": M}, (M + 1) * B),
    # SmoothAdv (Salman et al.): k PGD steps on m noisy copies, then train on the m copies.
    ("smoothadv", {"copies": M, "attack_steps": STEPS, "warmup": 0}, (STEPS + 1) * M * B),
    # SmoothMix (Jeong et al.): m clean noisy copies (CE and the soft prediction), k adversary
    # steps on m copies, and the mixed point's m copies.
    ("smoothmix", {"copies": M, "attack_steps": STEPS, "warmup": 0}, (STEPS + 2) * M * B),
    # Consistency: m noisy copies once. MACER: m copies once.
    ("consistency", {"copies": M}, M * B),
    ("macer", {"copies": M}, M * B),
    # PGD-AT: k attack steps, one training forward. TRADES: the clean prediction, k attack
    # steps, the clean and adversarial training forwards.
    ("pgd_at", {"attack_steps": STEPS}, (STEPS + 1) * B),
    ("trades", {"attack_steps": STEPS}, (STEPS + 3) * B),
]


@pytest.mark.parametrize("name, hp, expected", COUNTS)
def test_examples_forwarded_per_step(name, hp, expected):
    assert _count(name, **hp)[0] == expected


@pytest.mark.parametrize("name, hp, expected", COUNTS)
def test_declared_cost_matches_the_counted_forwards(name, hp, expected):
    method = build_method(name, **hp)
    assert method.cost() == pytest.approx(_count(name, **hp)[1])


def _run(method_name: str, structure: str, **hp) -> Run:
    cfg = TrainConfig(dataset="digits", out="unused", arch="digits_cnn", method=method_name,
                      method_args=hp, step_structure=structure, batch=256)
    method = build_method(method_name, **hp)
    method.setup(num_classes=10)
    torch.manual_seed(0)
    model = build_model_for("digits_cnn", "digits").train()
    return Run(cfg=cfg, out=Path("unused"), device=torch.device("cpu"), dist=Dist.from_env(), model=model,
               forward=model, method=method, perturbation=None,
               optimizer=torch.optim.SGD(model.parameters(), lr=0.01), splits={}, loaders={},
               record={}, state=TrainState(generator=torch.Generator().manual_seed(0)))


def _steps_of_one_batch(run: Run) -> list[int]:
    """Training-forward sizes (train mode, with grad) between optimiser steps, per step."""
    sizes: list[int] = []
    per_step: list[int] = []
    run.model.net.register_forward_hook(
        lambda mod, inp, out: sizes.append(inp[0].shape[0]) if mod.training and torch.is_grad_enabled() else None)
    step = run.optimizer.step

    def counted_step(*a, **k):
        per_step.append(sum(sizes))
        sizes.clear()
        return step(*a, **k)

    run.optimizer.step = counted_step
    x, y = torch.rand(256, 1, 8, 8), torch.randint(0, 10, (256,))
    outputs = train_batch(run, x, y)
    assert sum(n for n, _ in outputs) <= 256
    return per_step


def test_smoothadv_reference_structure_takes_m_steps_of_b_noisy_inputs():
    """Hadisalman/smoothing-adversarial code/train_pgd.py:202-267: a loader batch of 256 with
    m = 8 is 8 chunks of 32 examples, each replicated 8 times: 8 SGD steps of 256 inputs."""
    run = _run("smoothadv", "reference", copies=8, attack_steps=1, warmup=0)
    assert _steps_of_one_batch(run) == [256] * 8
    joint = _run("smoothadv", "joint", copies=8, attack_steps=1, warmup=0)
    assert _steps_of_one_batch(joint) == [256 * 8]


@pytest.mark.parametrize("name, m, steps", [("smoothmix", 2, 2), ("consistency", 4, 4), ("macer", 4, 1),
                                            ("gaussian", None, 1)])
def test_reference_steps_per_batch(name, m, steps):
    """SmoothMix and consistency chunk like SmoothAdv; MACER's reference does not (macer.py:24-68:
    one step on B x k); single-copy methods take one step either way."""
    hp = {"copies": m} if m else {}
    if name == "smoothmix":
        hp["attack_steps"] = 1
    run = _run(name, "reference", **hp)
    sizes = _steps_of_one_batch(run)
    per_input = 2 if name == "smoothmix" else 1          # SmoothMix trains on clean and mixed copies
    assert len(sizes) == steps
    assert sum(sizes) == 256 * (m or 1) * per_input
