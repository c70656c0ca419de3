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


def _conv_std_ratio(model: torch.nn.Module) -> list[float]:
    """For each 3x3 convolution with many weights: its weight std over sqrt(2 / fan_out)."""
    out = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 4096:
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            out.append(m.weight.std().item() / (2.0 / fan_out) ** 0.5)
    return out


@pytest.mark.parametrize("arch, reference_init", [("wrn_34_10", True), ("amp_preact_resnet18", True),
                                                  ("preact_resnet18", False)])
def test_reference_initialisations(arch, reference_init):
    """TRADES's/AWP's WideResNet and AMP's PreAct ResNet draw conv weights from N(0, 2/fan_out) and
    zero the Linear bias; PyTorch's default (Rice et al.'s PreAct ResNet) is ~sqrt(1/3) of it
    (uniform, fan-in based) and leaves a nonzero bias."""
    torch.manual_seed(0)
    net = MODELS.get(arch)(10, 3)
    ratios = _conv_std_ratio(net)
    assert ratios
    if reference_init:
        assert all(abs(r - 1) < 0.05 for r in ratios), ratios
        assert all(float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, torch.nn.Linear))
    else:
        assert all(r < 0.8 for r in ratios), ratios


def test_amp_preact_resnet18_has_the_references_block_biases():
    """AMP's preresnet.py: biased block and shortcut convolutions (19 tensors), an unbiased stem;
    otherwise the same layers as preact_resnet18."""
    amp, plain = MODELS.get("amp_preact_resnet18")(10, 3), MODELS.get("preact_resnet18")(10, 3)
    biases = [n for n, m in amp.named_modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None]
    assert len(biases) == 19 and "conv1" not in biases
    shapes = lambda net: [tuple(p.shape) for n, p in net.named_parameters() if not n.endswith(".bias")]  # noqa: E731
    assert shapes(amp) == shapes(plain)


@pytest.mark.parametrize("arch, carries", [("amp_preact_resnet18", "preactivated"), ("preact_resnet18", "input")])
def test_identity_shortcuts_carry_what_each_reference_adds(arch, carries):
    """AMP's blocks add relu(bn1(x)) on an identity shortcut (preresnet.py:30-31); Rice et al.'s
    (and He et al.'s) add x itself. Checked on the 5 identity blocks, in eval mode."""
    torch.manual_seed(0)
    net = MODELS.get(arch)(10, 3).eval()
    blocks = [b for b in net.modules() if type(b).__name__ == "PreActBlock" and b.shortcut is None]
    assert len(blocks) == 5
    for block in blocks:
        with torch.no_grad():
            for bn in (block.bn1, block.bn2):                   # non-trivial statistics
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
            x = torch.randn(2, block.conv1.in_channels, 4, 4)
            a = torch.relu(block.bn1(x))
            residual = block.conv2(torch.relu(block.bn2(block.conv1(a))))
            expected = residual + (a if carries == "preactivated" else x)
            assert torch.allclose(block(x), expected, atol=1e-5)
