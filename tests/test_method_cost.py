"""The adversarial smoothing methods cost what their papers' step counts imply: no redundant
forward passes. Counted exactly with a forward hook (examples through the network per step)."""

from __future__ import annotations

import pytest
import torch

from robustmaxup.checkpoints import build_model_for
from robustmaxup.methods import build_method

B, M, STEPS = 8, 3, 2


def _count_examples(name: str, **hp) -> int:
    method = build_method(name, **hp)
    method.setup(num_classes=10)
    model = build_model_for("digits_cnn", "digits").train()
    seen = []
    model.net.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    x, y = torch.rand(B, 1, 8, 8), torch.randint(0, 10, (B,))
    prepared = method.prepare(model, x, y, generator=torch.Generator().manual_seed(0))
    method.loss(model, prepared).loss.backward()
    return sum(seen)


@pytest.mark.parametrize("name, hp, expected", [
    # Gaussian: one forward of the noisy batch.
    ("gaussian", {}, B),
    # MaxUp: m copies scored without grad, then the B worst copies trained.
    ("maxup", {"m": M}, (M + 1) * B),
    # SmoothAdv (Salman et al.): k PGD steps on m noisy copies, then train on the m copies.
    ("smoothadv", {"m_train": M, "attack_steps": STEPS, "warmup": 0}, (STEPS + 1) * M * B),
    # SmoothMix (Jeong et al.): m clean noisy copies (CE and the soft prediction), k adversary
    # steps on m copies, and the mixed point's m copies.
    ("smoothmix", {"m_train": M, "attack_steps": STEPS, "warmup": 0}, (STEPS + 2) * M * B),
    # Consistency: m noisy copies once. MACER: m copies once.
    ("consistency", {"m_train": M}, M * B),
    ("macer", {"m_train": M}, M * B),
])
def test_examples_forwarded_per_step(name, hp, expected):
    assert _count_examples(name, **hp) == expected
