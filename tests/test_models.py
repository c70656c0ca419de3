"""Contract tests over the model registry, and normalisation inside the model."""

from __future__ import annotations

import pytest
import torch

from robustmaxup.errors import UserError
from robustmaxup.models import MODELS, build_model, model_state

SHAPES = {"digits_cnn": ("digits", (1, 8, 8)), "resnet50": ("imagenet", (3, 64, 64))}


def _input(arch: str, batch: int = 2) -> tuple[str, torch.Tensor]:
    dataset, shape = SHAPES.get(arch, ("cifar10", (3, 32, 32)))
    return dataset, torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", MODELS.names())
def test_model_contract(arch):
    dataset, x = _input(arch)
    model = build_model(arch, num_classes=7, dataset=dataset)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


def test_normalisation_is_inside_the_model():
    model = build_model("digits_cnn", dataset="digits").eval()
    x = torch.rand(4, 1, 8, 8)
    mean, std = model.normalize.mean, model.normalize.std
    assert torch.allclose(model(x), model.net((x - mean) / std))
    assert "normalize.mean" in model.state_dict()


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(UserError, match="cifar_resnet110"):
        build_model("resnet9000", dataset="cifar10")


def test_model_state_restores_modes_and_requires_grad_even_on_error():
    model = build_model("digits_cnn", dataset="digits").train()
    model.net.fc.weight.requires_grad_(False)
    model.net.features[1].eval()  # a submodule with its own mode
    before = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    with pytest.raises(RuntimeError):
        with model_state(model, train=False, requires_grad=False):
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")
    assert all(m.training == mode for m, mode in before)
    assert all(p.requires_grad == flag for p, flag in grads)
