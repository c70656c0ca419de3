"""Contract tests over the model registry, and normalisation inside the model."""

from __future__ import annotations

import pytest
import torch

from robustmaxup.errors import UserError
from robustmaxup.models import MODELS, build_model, model_state

#: arch -> (input channels, a small input size the arch accepts); default: CIFAR-shaped 3x32x32.
#: resnet50 is the 224px ImageNet network; its global pooling takes 64px inputs just as well.
SHAPES = {"digits_cnn": (1, 8, 8), "resnet50": (3, 64, 64)}


def _input(arch: str, batch: int = 2) -> torch.Tensor:
    shape = SHAPES.get(arch, (3, 32, 32))
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", MODELS.names())
def test_model_contract(arch):
    x = _input(arch)
    channels = x.shape[1]
    model = build_model(arch, 7, in_channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


def _digits_model() -> torch.nn.Module:
    return build_model("digits_cnn", 10, in_channels=1, mean=(0.3053,), std=(0.3760,))


def test_normalisation_is_inside_the_model():
    model = _digits_model().eval()
    x = torch.rand(4, 1, 8, 8)
    mean, std = model.normalize.mean, model.normalize.std
    assert torch.allclose(model(x), model.net((x - mean) / std))
    assert "normalize.mean" in model.state_dict()
    assert mean.flatten().tolist() == pytest.approx([0.3053]) and std.flatten().tolist() == pytest.approx([0.3760])


def test_build_model_takes_everything_explicitly_and_defaults_to_no_normalisation():
    model = build_model("cifar_resnet20", 5)
    assert model.net.fc.out_features == 5
    assert model.normalize.mean.flatten().tolist() == [0.0, 0.0, 0.0]
    assert model.normalize.std.flatten().tolist() == [1.0, 1.0, 1.0]
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), model.net(x))
    with pytest.raises(TypeError):
        build_model("digits_cnn", 10, "digits")  # no dataset lookups in models


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(UserError, match="cifar_resnet110"):
        build_model("resnet9000", 10)


def test_model_state_restores_modes_and_requires_grad_even_on_error():
    model = _digits_model().train()
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
