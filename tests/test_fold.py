"""BatchNorm folding (robustmaxup.models.fold): the folded copy computes the model's function on
every registered architecture, the original is untouched, and certification with ``fold_bn``
agrees with certification without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmaxup.certify import Smooth
from robustmaxup.models import MODELS, build_model
from robustmaxup.models.fold import fold_batchnorm

#: input size per architecture (every one is fully convolutional: small inputs keep this fast)
SIZES = {"digits_cnn": (1, 8, 8), "resnet50": (3, 32, 32)}


def _randomise_norms(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones fold to identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("arch", MODELS.names())
def test_folded_copy_computes_the_same_function(arch):
    shape = SIZES.get(arch, (3, 16, 16))
    model = build_model(arch, 10, in_channels=shape[0])
    _randomise_norms(model, seed=len(arch))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, pairs = fold_batchnorm(model)
    assert pairs >= 1 and _norms(folded) == _norms(model) - pairs
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.eval().double()(x.double())
        got = folded(x).double()
    assert torch.isfinite(got).all()
    assert (got - ref).norm() / ref.norm() < 1e-5  # fp32 rounding only
    model.float().train()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)  # untouched


def test_post_activation_resnet_keeps_no_batchnorm():
    model = build_model("cifar_resnet20", 10)
    folded, pairs = fold_batchnorm(model)
    assert pairs == _norms(model) and _norms(folded) == 0


class _Shared(nn.Module):
    """A convolution whose output feeds a BatchNorm AND a skip connection: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _CalledTwice(nn.Module):
    """One convolution module called at two places, once before a BatchNorm: fusing that call's
    BatchNorm into the module would change the other call too, so it is not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.bn(self.conv(x))


@pytest.mark.parametrize("module", [_Shared, _CalledTwice, _Untraceable])
def test_what_cannot_be_folded_is_left_as_it_is(module):
    model = module()
    _randomise_norms(model, 0)
    folded, pairs = fold_batchnorm(model)
    assert pairs == 0 and _norms(folded) == 1 and not folded.training and folded is not model
    x = torch.rand(2, 2, 6, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), model.eval()(x))


def test_smoothing_a_folded_model_gives_the_same_certificates():
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, in_channels=1)
    _randomise_norms(model, 3)
    xs = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    def certify(fold: bool):
        gens = [torch.Generator().manual_seed(i) for i in range(len(xs))]
        return Smooth(model, 10, 0.25, fold_bn=fold).certify_batch(xs, 50, 1000, 0.001, 1000, gens)

    plain, folded = certify(False), certify(True)
    assert _norms(model) == 3  # the smoothed object folded a copy
    for a, b in zip(plain, folded):  # same noise: at most a rounding tie flips a vote
        assert a.prediction == b.prediction
        assert sum(abs(i - j) for i, j in zip(a.counts, b.counts)) <= 3


def test_certify_cli_records_folding_and_resumes_only_with_it(digits_checkpoint, tmp_path, capsys):
    import json

    from robustmaxup.cli import main

    out = tmp_path / "c.tsv"
    fast = [digits_checkpoint, "--dataset", "digits", "--n0", "20", "--n", "100", "--batch", "100",
            "--skip", "90", "--max", "2", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(["certify", *fast, "--fold-bn"]) == 0
    assert json.loads((tmp_path / "c.tsv.json").read_text())["fold_bn"] is True
    capsys.readouterr()
    assert main(["certify", *fast, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--fold-bn (True, now False)" in err and len(err.strip().splitlines()) == 1
