"""Exact details of the architectures (parameter counts, block counts, strides, layer order,
initialisation, the normalisation as first layer) and of the published recipes, each pinned to
its source: a hand count from the architecture or a line of the authors' code."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.checkpoints import build_model_for
from robustmaxup.errors import UserError
from robustmaxup.models import MODELS, Normalize, build_model, frozen_bn_stats, model_state
from robustmaxup.models.fold import fold_batchnorm
from robustmaxup.models.init import fan_out_init
from robustmaxup.models.preact_resnet import PreActResNet18
from robustmaxup.models.probe import log_clean_accuracy
from robustmaxup.models.resnet_cifar import CifarResNet
from robustmaxup.models.state import input_dtype
from robustmaxup.models.wide_resnet import WideResNet
from robustmaxup.runtime.checks import FieldError
from robustmaxup.train import RECIPES, TrainConfig, merge_flat, read_flat
from robustmaxup.train.config import RESUMABLE_CHANGES, lr_at, recipe_overrides, upgrade_record

# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------

#: parameters of each model for 10 classes and 3 input channels, counted by hand:
#: * CIFAR ResNet-(6n+2) (He et al. 2016; Cohen et al.'s code/archs/cifar_resnet.py: 3x3 convs
#:   without bias, 1x1 conv + BN projection shortcuts): stem 432 + BN 32; per stage of width c
#:   n blocks of 2 convs 9c^2 and 2 BNs 4c (the first one 9·c_in·c instead, plus its projection
#:   c_in·c + 2c); fc 64·10 + 10. n = 18: 1,730,714 (the paper's "1.7M"); n = 3: 272,474.
#: * PreActResNet-18 (Rice et al.'s preactresnet.py): 11,172,170; AMP's variant adds the 19 bias
#:   tensors of the block and shortcut convolutions, 4·(64+128+256+512) + (128+256+512) = 4,736.
#: * WRN-28-10 and WRN-34-10 (TRADES's wideresnet.py): 36,479,194 and 46,160,474, the counts the
#:   WRN and TRADES literature quote (36.5M, 46.2M).
PARAMETERS = {
    "cifar_resnet20": 272_474,
    "cifar_resnet110": 1_730_714,
    "preact_resnet18": 11_172_170,
    "amp_preact_resnet18": 11_172_170 + 4_736,
    "wrn_28_10": 36_479_194,
    "wrn_34_10": 46_160_474,
}


@pytest.mark.parametrize("arch, count", PARAMETERS.items())
def test_parameter_counts_of_the_standard_models(arch, count):
    """Every registered CIFAR architecture has exactly the parameters of its reference."""
    net = MODELS.get(arch)(10, 3)
    assert sum(p.numel() for p in net.parameters()) == count


@pytest.mark.parametrize("cls, bad", [(CifarResNet, 23), (CifarResNet, 24), (WideResNet, 31), (WideResNet, 30)])
def test_depths_outside_the_family_are_refused(cls, bad):
    """CIFAR ResNets are 6n+2 layers deep, Wide ResNets 6n+4 (23 and 31 are 3 mod 6)."""
    with pytest.raises(ValueError, match="depth must be 6n"):
        cls(bad, 10) if cls is CifarResNet else cls(bad, 1, 10)


def _stage_outputs(net: nn.Module, stages: list[nn.Module], x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    hooks = [s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for s in stages]
    with torch.no_grad():
        net.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize("arch, blocks, shapes", [
    ("cifar_resnet20", 3, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("cifar_resnet110", 18, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("preact_resnet18", 2, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("wrn_28_10", 4, [(160, 32, 32), (320, 16, 16), (640, 8, 8)]),
    ("wrn_34_10", 5, [(160, 32, 32), (320, 16, 16), (640, 8, 8)]),
])
def test_stages_blocks_and_feature_map_sizes(arch, blocks, shapes):
    """Blocks per stage and each stage's output on a 32x32 image: the first stage keeps the
    resolution, every later one halves it (stride 2 in its first block only)."""
    torch.manual_seed(0)
    net = MODELS.get(arch)(10, 3)
    stages = ([net.layer1, net.layer2, net.layer3] if arch.startswith("cifar") else
              list(net.layers) if arch.startswith("preact") else list(net.stages))
    assert [len(s) for s in stages] == [blocks] * len(stages)
    got = _stage_outputs(net, stages, torch.rand(1, 3, 32, 32))
    assert got == [(1, *s) for s in shapes]


def _random_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so the eval-mode function shows
    every layer (a BN at its init is the identity up to eps)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def _resnet_reference(net: CifarResNet, x: torch.Tensor) -> torch.Tensor:
    """Cohen et al.'s code/archs/cifar_resnet.py forward (BasicBlock :32-50, ResNet :143-156):
    relu after the stem; conv-bn-relu-conv-bn, add, relu; average pool over the 8x8 map."""
    x = F.relu(net.bn1(net.conv1(x)))
    for block in [*net.layer1, *net.layer2, *net.layer3]:
        shortcut = x if block.downsample is None else block.downsample[1](block.downsample[0](x))
        out = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        x = F.relu(out + shortcut)
    return net.fc(F.avg_pool2d(x, 8).flatten(1))


def _preact_reference(net: PreActResNet18, x: torch.Tensor, amp: bool) -> torch.Tensor:
    """Rice et al.'s preactresnet.py (and AMP's preresnet.py, whose identity shortcut carries the
    pre-activated input): bn-relu, then a projection shortcut of the pre-activation; conv,
    bn-relu-conv; after the last stage bn-relu and a 4x4 average pool."""
    x = net.conv1(x)
    for block in [b for stage in net.layers for b in stage]:
        a = F.relu(block.bn1(x))
        shortcut = block.shortcut(a) if block.shortcut is not None else (a if amp else x)
        x = block.conv2(F.relu(block.bn2(block.conv1(a)))) + shortcut
    return net.fc(F.avg_pool2d(F.relu(net.bn(x)), 4).flatten(1))


def _wrn_reference(net: WideResNet, x: torch.Tensor) -> torch.Tensor:
    """TRADES's models/wideresnet.py (BasicBlock :23-32, WideResNet :84-92): a block whose
    input and output widths differ projects relu(bn1(x)), an equal-width block adds x; after the
    last stage bn-relu and an 8x8 average pool."""
    x = net.conv1(x)
    for block in [b for stage in net.stages for b in stage]:
        a = F.relu(block.bn1(x))
        shortcut = x if block.shortcut is None else block.shortcut(a)
        x = block.conv2(F.relu(block.bn2(block.conv1(a)))) + shortcut
    return net.fc(F.avg_pool2d(F.relu(net.bn(x)), 8).flatten(1))


@pytest.mark.parametrize("name, build, reference", [
    ("cifar_resnet20", lambda: CifarResNet(20, 10), _resnet_reference),
    ("preact_resnet18", lambda: PreActResNet18(10), lambda n, x: _preact_reference(n, x, amp=False)),
    ("amp_preact_resnet18", lambda: MODELS.get("amp_preact_resnet18")(10, 3),
     lambda n, x: _preact_reference(n, x, amp=True)),
    ("wide_resnet_10_2", lambda: WideResNet(10, 2, 10), _wrn_reference),
])
def test_forward_is_the_reference_layer_order(name, build, reference):
    """Each architecture computes its reference code's function, layer by layer (eval mode)."""
    torch.manual_seed(0)
    net = _random_bn(build())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(net, x), rtol=1e-4, atol=1e-4)


def test_cifar_resnet_keeps_cohens_parameter_names():
    """Cohen et al.'s released checkpoints map onto CifarResNet by name: the projection
    shortcut is ``downsample.0`` (conv) and ``downsample.1`` (BN) in the first block of stages 2
    and 3 only (code/archs/cifar_resnet.py:127-131)."""
    keys = CifarResNet(110, 10).state_dict()
    shortcuts = sorted({k.rsplit(".", 2)[0] for k in keys if ".downsample." in k})
    assert shortcuts == ["layer2.0.downsample", "layer3.0.downsample"]
    assert tuple(keys["layer2.0.downsample.0.weight"].shape) == (32, 16, 1, 1)
    assert tuple(keys["layer3.0.downsample.1.running_var"].shape) == (64,)
    assert "layer3.17.bn2.weight" in keys and "layer3.18.bn2.weight" not in keys
    assert not any(k.endswith("bias") and "conv" in k for k in keys)


def _conv_ratios(net: nn.Module) -> list[float]:
    """std(weight) / sqrt(2 / (k·k·out_channels)) of every convolution whose input and output
    widths differ (there fan-in and fan-out initialisations disagree) with >= 1024 weights."""
    return [m.weight.std().item() / (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5
            for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels != m.out_channels
            and m.weight.numel() >= 1024]


@pytest.mark.parametrize("build", [lambda: CifarResNet(110, 10), lambda: WideResNet(16, 4, 10),
                                   lambda: PreActResNet18(10, fan_out=True)])
def test_convolutions_get_he_normal_fan_out_init(build):
    """N(0, 2/(k·k·out_channels)): Cohen et al.'s cifar_resnet.py:119-121, TRADES's
    wideresnet.py:74-76, AMP's preresnet.py:87-90; BatchNorm weight 1 and bias 0."""
    torch.manual_seed(0)
    net = build()
    ratios = _conv_ratios(net)
    assert ratios and all(abs(r - 1) < 0.1 for r in ratios), ratios
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert bool((m.weight == 1).all()) and bool((m.bias == 0).all())


def test_fan_out_init_sets_batchnorm_and_linear_bias():
    """fan_out_init resets BatchNorm to (1, 0) and zeroes every Linear bias (TRADES's
    wideresnet.py:77-82), even after they were changed."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(2.0)
        net[3].bias.fill_(1.0)
    fan_out_init(net)
    assert bool((net[1].weight == 1).all()) and bool((net[1].bias == 0).all())
    assert bool((net[3].bias == 0).all())


def test_preact_resnet18_keeps_pytorchs_default_init():
    """Rice et al.'s PreActResNet18 has no custom init: conv weights are PyTorch's uniform
    (fan-in) default, well below He-normal fan-out (ratio about sqrt(1/3) on equal widths)."""
    torch.manual_seed(0)
    net = PreActResNet18(10)
    ratios = [m.weight.std().item() / (2.0 / (9 * m.out_channels)) ** 0.5
              for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
              and m.in_channels == m.out_channels]
    assert ratios and all(r < 0.7 for r in ratios), ratios


def test_cifar10_normalisation_is_cohens_and_the_first_layer():
    """CIFAR-10 models normalise with Cohen et al.'s constants (code/datasets.py:43-44) as
    their first layer, and ``(x - mean) / std`` per channel."""
    model = build_model_for("cifar_resnet20", "cifar10")
    first = next(iter(model.children()))
    assert isinstance(first, Normalize)
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])
    assert model.normalize.std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), (x - mean) / std)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), model.net((x - mean) / std), atol=1e-5)


def test_build_model_without_normalisation_is_the_bare_network():
    """No mean/std: the identity normalisation (mean 0, std 1), per input channel."""
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, in_channels=1).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))


def test_output_order_picks_the_nets_outputs():
    """After set_output_order(order), output j is the network's output order[j]; the identity
    order stores nothing."""
    torch.manual_seed(0)
    model = build_model("digits_cnn", 3, in_channels=1).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        raw = model(x)
        model.set_output_order([2, 0, 1])
        assert torch.equal(model(x), raw[:, [2, 0, 1]])
    model.set_output_order([0, 1, 2])
    assert model.output_order is None and "output_order" not in model.state_dict()


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------

#: each recipe's values, typed from the authors' code at the commit ``Recipe.repo`` names (the
#: file:line is in each Setting's source); values chosen among released sweep logs are pinned to
#: the log directory the source names.
_COHEN_CORE = {"arch": "cifar_resnet110", "epochs": 90, "batch": 256, "lr": 0.1, "schedule": "step",
               "lr_step": 30, "lr_gamma": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
               "data_augment": True}                                  # locuslab/smoothing code/train.py:24-36
_JEONG_CORE = {"arch": "cifar_resnet110", "epochs": 150, "batch": 256, "lr": 0.1, "schedule": "multistep",
               "lr_milestones": [51, 101], "lr_gamma": 0.1, "momentum": 0.9, "nesterov": False,
               "weight_decay": 1e-4, "data_augment": True}            # StepLR(50).step(epoch) after each epoch
_SMOOTHMIX = {**_JEONG_CORE, "copies": 2, "attack_steps": 4, "mix_step": 0, "smoothmix_eta": 5.0,
              "smoothmix_max_norm": 0.0, "warmup": 10}                # smoothmix EXPERIMENTS.MD:77-82
_CONSISTENCY = {**_JEONG_CORE, "copies": 2, "consistency_eta": 0.5}  # train_consistency.py:28-60
PUBLISHED = {
    "cohen": {"method": "gaussian", "sigma": 0.25, **_COHEN_CORE},
    "maxup": {"method": "maxup", "sigma": 0.25, "copies": 4, "augment": "gaussian", **_COHEN_CORE},
    "smoothadv": {"method": "smoothadv", "sigma": 0.25, "arch": "cifar_resnet110", "epochs": 150, "batch": 256,
                  "lr": 0.1, "schedule": "step", "lr_step": 50, "lr_gamma": 0.1, "momentum": 0.9,
                  "nesterov": False, "weight_decay": 1e-4, "data_augment": True, "smoothadv_eps": 255 / 256,
                  "attack_steps": 10, "copies": 8, "multi_noise": True, "warmup": 10},
    "smoothmix": {"method": "smoothmix", "sigma": 0.25, "attack_step_size": 0.5, **_SMOOTHMIX},
    "smoothmix_s0.5": {"method": "smoothmix", "sigma": 0.5, "attack_step_size": 1.0, **_SMOOTHMIX},
    "smoothmix_s1.0": {"method": "smoothmix", "sigma": 1.0, "attack_step_size": 2.0, **_SMOOTHMIX},
    "consistency": {"method": "consistency", "sigma": 0.25, "lbd": 20.0, **_CONSISTENCY},
    "consistency_s0.5": {"method": "consistency", "sigma": 0.5, "lbd": 10.0, **_CONSISTENCY},
    "consistency_s1.0": {"method": "consistency", "sigma": 1.0, "lbd": 10.0, **_CONSISTENCY},
    "macer": {"method": "macer", "sigma": 0.25, "arch": "cifar_resnet110", "epochs": 440, "batch": 64,
              "lr": 0.01, "schedule": "multistep", "lr_milestones": [199, 399], "lr_gamma": 0.1,
              "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "data_augment": True, "copies": 16,
              "lbd": 12.0, "macer_gamma": 8.0, "macer_beta": 16.0},          # RuntianZ/macer main.py:39-53,135-138
    "pgd_at": {"method": "pgd_at", "arch": "preact_resnet18", "epochs": 200, "batch": 128, "lr": 0.1,
               "schedule": "piecewise", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
               "data_augment": True, "crop_padding": "reflect", "norm": "Linf", "attack_eps": 8 / 255,
               "attack_steps": 10, "attack_step_size": 2 / 255, "attack_train_mode": True,
               "eval_steps": 10},                                     # robust_overfitting train_cifar.py:128-144,230
    "trades": {"method": "trades", "arch": "wrn_34_10", "epochs": 76, "batch": 128, "lr": 0.1,
               "schedule": "multistep", "lr_milestones": [74, 89, 99], "lr_gamma": 0.1, "momentum": 0.9,
               "nesterov": False, "weight_decay": 2e-4, "data_augment": True, "norm": "Linf",
               "attack_eps": 0.031, "attack_steps": 10, "attack_step_size": 0.007,
               "trades_beta": 6.0},                                   # TRADES train_trades_cifar10.py:16-36,137-157
    "awp_at": {"method": "pgd_at", "arch": "preact_resnet18", "epochs": 200, "batch": 128, "lr": 0.1,
               "schedule": "piecewise", "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
               "data_augment": True, "crop_padding": "reflect", "norm": "Linf", "attack_eps": 8 / 255,
               "attack_steps": 10, "attack_step_size": 2 / 255, "attack_train_mode": True, "eval_steps": 20,
               "awp_gamma": 0.01, "awp_warmup": 0},                   # AWP AT_AWP/train_cifar10.py:130-163,240
    "awp_trades": {"method": "trades", "arch": "wrn_34_10", "epochs": 200, "batch": 128, "lr": 0.1,
                   "schedule": "multistep", "lr_milestones": [99, 149], "lr_gamma": 0.1, "momentum": 0.9,
                   "nesterov": False, "weight_decay": 5e-4, "data_augment": True, "norm": "Linf",
                   "attack_eps": 8 / 255, "attack_steps": 10, "attack_step_size": 2 / 255, "trades_beta": 6.0,
                   "awp_gamma": 0.005, "awp_warmup": 9},              # trades_AWP/train_trades_cifar.py:19-62,260-296
    "amp": {"method": "standard", "arch": "amp_preact_resnet18", "epochs": 200, "batch": 50, "lr": 0.1,
            "schedule": "multistep", "lr_milestones": [100, 150], "lr_gamma": 0.1, "momentum": 0.9,
            "nesterov": True, "weight_decay": 1e-4, "data_augment": True, "crop_padding": "grey",
            "amp_eps": 0.5, "amp_step_size": 1.0, "amp_steps": 1, "amp_per_tensor": True,
            "amp_warmup": 0},                                         # AMP-Regularizer main.py:95-136
}


def test_every_recipe_is_pinned_here():
    assert sorted(PUBLISHED) == sorted(RECIPES.names())


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_recipe_values_are_the_authors(name):
    """Every value of every recipe, as the authors' code (or the released log it names) has it."""
    values = RECIPES.get(name).values()
    wrong = {k: (values.get(k), v) for k, v in PUBLISHED[name].items() if values.get(k) != pytest.approx(v)}
    assert not wrong, f"{name}: (recipe, authors') {wrong}"


def _reference_lr(name: str, epoch: int, epochs: int) -> float:
    """The learning rate the authors' loop uses during 0-based ``epoch``."""
    if name in ("cohen", "maxup", "smoothadv"):     # StepLR.step(epoch) before the epoch
        step = 50 if name == "smoothadv" else 30
        return 0.1 * 0.1 ** (epoch // step)
    if name.startswith(("smoothmix", "consistency")):  # StepLR(50).step(epoch) after the epoch
        return 0.1 * 0.1 ** (max(epoch - 1, 0) // 50)
    if name == "macer":                             # MultiStepLR([200, 400]).step() before epoch e+1
        return 0.01 * 0.1 ** sum(epoch + 1 >= m for m in (200, 400))
    if name in ("pgd_at", "awp_at"):                # lr_schedule(t) at the epoch's start, t = epoch
        t = epoch / epochs
        return 0.1 if t < 0.5 else 0.01 if t < 0.75 else 0.001
    if name == "trades":                            # adjust_learning_rate(epoch + 1)
        return 0.1 * (0.001 if epoch + 1 >= 100 else 0.01 if epoch + 1 >= 90 else 0.1 if epoch + 1 >= 75 else 1)
    if name == "awp_trades":
        return 0.1 * (0.01 if epoch + 1 >= 150 else 0.1 if epoch + 1 >= 100 else 1)
    if name == "amp":                               # MultiStepLR([100, 150]).step() after the epoch
        return 0.1 * 0.1 ** sum(epoch >= m for m in (100, 150))
    raise KeyError(name)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_recipe_learning_rate_follows_the_authors_loop_epoch_by_epoch(name):
    """lr_at of every 0-based epoch is the rate the reference loop trains that epoch with (TRADES
    also past its 76 epochs, where its late milestones act)."""
    epochs = 110 if name == "trades" else RECIPES.get(name).values()["epochs"]
    cfg = TrainConfig.from_recipe(name, dataset="cifar10", out="r", epochs=epochs)
    got = [lr_at(cfg, e) for e in range(epochs)]
    want = [_reference_lr(name, e, epochs) for e in range(epochs)]
    assert got == pytest.approx(want, rel=1e-9)


def test_schedules_at_their_boundaries():
    """step: decays exactly at multiples of lr_step; multistep: from the milestone epoch on;
    piecewise: /10 from half the epochs, /100 from three quarters; cosine: 1 at epoch 0."""
    cfg = TrainConfig(dataset="digits", out="r", lr=1.0, lr_step=3, lr_gamma=0.5, epochs=8)
    assert [lr_at(cfg, e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cfg = TrainConfig(dataset="digits", out="r", lr=1.0, schedule="multistep", lr_milestones=(2, 4), lr_gamma=0.1)
    assert [lr_at(cfg, e) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cfg = TrainConfig(dataset="digits", out="r", lr=1.0, schedule="piecewise", epochs=8)
    assert [lr_at(cfg, e) for e in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    cfg = TrainConfig(dataset="digits", out="r", lr=1.0, schedule="cosine", epochs=4)
    assert [lr_at(cfg, e) for e in range(4)] == pytest.approx([1.0, 0.5 * (1 + 2 ** -0.5), 0.5, 0.5 * (1 - 2 ** -0.5)])


def test_config_defaults_are_cohens_recipe():
    """A config given only its dataset and run directory trains as Cohen et al. did."""
    flat = TrainConfig(dataset="cifar10", out="r").flat()
    assert {k: flat[k] for k in _COHEN_CORE} == _COHEN_CORE
    assert flat["method"] == "gaussian" and flat["crop_padding"] == "zeros" and flat["step_structure"] == "reference"


# --------------------------------------------------------------------------------------------
# Folding, mode context managers, the clean-accuracy probe
# --------------------------------------------------------------------------------------------

def test_fold_counts_each_pair_once_and_leaves_the_model_as_it_was():
    """CIFAR ResNet-20 has 19 conv-BN pairs plus 2 in its projection shortcuts (21 folded); the
    folded copy is in eval mode and the model keeps its mode."""
    torch.manual_seed(0)
    model = _random_bn(CifarResNet(20, 10)).train()
    folded, pairs = fold_batchnorm(model)
    assert pairs == 21 and not folded.training and model.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), model.eval()(x), rtol=1e-4, atol=1e-4)


class _NoStats(nn.Module):
    """A BatchNorm without running statistics normalises with batch statistics even in eval
    mode, so it is not an affine map: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_fold_skips_a_batchnorm_without_running_statistics():
    model = _NoStats()
    folded, pairs = fold_batchnorm(model)
    assert pairs == 0
    x = torch.rand(4, 2, 6, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), model.eval()(x), atol=1e-6)


def test_frozen_bn_stats_uses_batch_statistics_and_keeps_the_running_ones():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.3).train()
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x = torch.randn(8, 3, 4, 4) * 3 + 2
    with frozen_bn_stats(bn):
        out = bn(x)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)     # batch statistics
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2]) and bn.momentum == 0.3


def test_model_state_restores_each_submodules_mode():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    net.train()
    net[1].eval()                                   # a mixed state must come back as it was
    with model_state(net, train=False):
        assert not net.training and not net[0].training
    assert net.training and net[0].training and not net[1].training


def test_input_dtype_of_a_model_without_parameters_is_float32():
    assert input_dtype(nn.ReLU()) == torch.float32
    assert input_dtype(nn.Linear(2, 2).double()) == torch.float64


@pytest.mark.parametrize("accuracy, warned", [(0.15, True), (0.2, False), (0.05, True)])
def test_probe_warns_below_twice_chance(caplog, accuracy, warned):
    """Near chance is below 2/classes (with at least 20 images)."""
    with caplog.at_level(logging.INFO, logger="robustmaxup.models.probe"):
        log_clean_accuracy(accuracy, 100, 10, "the model")
    assert any("near chance" in r.getMessage() for r in caplog.records) == warned


# --------------------------------------------------------------------------------------------
# The flags <-> config mapping
# --------------------------------------------------------------------------------------------

def test_config_layers_explicit_values_over_the_recipe_over_earlier_layers():
    merged = merge_flat({"lr": 0.3, "epochs": 7}, {"recipe": "macer", "epochs": 2})
    assert merged["epochs"] == 2 and merged["lr"] == 0.01 and merged["batch"] == 64


def test_config_switching_method_drops_the_old_methods_options():
    merged = merge_flat({"method": "macer", "macer_beta": 3.0, "sigma": 0.5}, {"method": "gaussian"})
    assert "macer_beta" not in merged and merged["sigma"] == 0.5


def test_config_refuses_two_weight_perturbations():
    with pytest.raises(UserError, match="choose one weight perturbation"):
        TrainConfig.from_flat({"dataset": "digits", "out": "r", "awp_gamma": 0.01, "amp_eps": 0.5})


@pytest.mark.parametrize("old", ["gamma", "eta", "beta", "m", "m_train", "awp", "amp"])
def test_config_refuses_every_former_name(old):
    with pytest.raises(FieldError) as e:
        TrainConfig.from_flat({"dataset": "digits", "out": "r", old: 1.0})
    assert e.value.field == old and "was renamed" in e.value.problem


def test_config_records_milestones_as_json_does_and_upgrades_old_records():
    flat = TrainConfig(dataset="digits", out="r", schedule="multistep", lr_milestones=(3, 5)).flat()
    assert flat["lr_milestones"] == [3, 5] and isinstance(flat["lr_milestones"], list)
    assert upgrade_record({"dataset": "digits"})["crop_padding"] == "zeros"


def test_config_resumable_changes_and_replayed_keys(tmp_path):
    """A continuation may change only how it runs (epochs, device, ...); a replayed config.json
    does not resume or silence by itself."""
    assert RESUMABLE_CHANGES == {"resume", "device", "epochs", "quiet", "workers", "out", "cache_dir"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TrainConfig(dataset="digits", out="r").flat(), "resume": True, "quiet": True}))
    flat = read_flat(path)
    assert "resume" not in flat and "quiet" not in flat and flat["dataset"] == "digits"


def test_config_recipe_overrides_name_every_changed_value():
    record = {**RECIPES.get("cohen").values(), "recipe": "cohen", "epochs": 3}
    del record["lr_step"]
    assert recipe_overrides(record) == {"epochs": {"recipe": 90, "value": 3},
                                        "lr_step": {"recipe": 30, "value": None}}


@pytest.mark.parametrize("field, value", [("lr_milestones", (3, 3)), ("lr", 0.0), ("nesterov", True)])
def test_config_validation_bounds(field, value):
    """Milestones strictly increase; the rate is > 0; Nesterov needs momentum (here 0)."""
    cfg = TrainConfig(dataset="digits", out="r", momentum=0.0, schedule="multistep", lr_milestones=(1,))
    setattr(cfg, field, value)
    with pytest.raises(FieldError) as e:
        cfg.validate()
    assert e.value.field == field


def test_config_multistep_needs_a_milestone():
    with pytest.raises(FieldError, match="must name at least one epoch"):
        TrainConfig(dataset="digits", out="r", schedule="multistep").validate()
