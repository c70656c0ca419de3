"""MaxUp: the efficient implementation (no-grad scoring, backward on the worst copies only)
equals the naive one (all copies with autograd, max over copies) in loss and gradients."""

from __future__ import annotations

import pytest
import torch

from robustmaxup.checkpoints import build_model_for
from robustmaxup.methods import build_method
from robustmaxup.methods.maxup import naive_maxup_loss, per_example_loss
from robustmaxup.runtime.checks import FieldError


def _setup(m: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model_for("digits_cnn", "digits").double()
    x = torch.rand(12, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (12,))
    method = build_method("maxup", sigma=0.5, copies=m)
    method.setup(num_classes=10)
    return model, x, y, method


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_efficient_equals_naive_in_eval_mode_float64(m):
    model, x, y, method = _setup(m)
    model.eval()  # BatchNorm uses running statistics: both versions see the same function
    xs, ts = method.draw_copies(x, y, torch.Generator().manual_seed(3))
    naive = naive_maxup_loss(model, xs, ts, m)
    naive_grads = torch.autograd.grad(naive, list(model.parameters()))
    worst = method.select_worst(model, xs, ts, x.shape[0]) if m > 1 else (xs, ts)
    efficient = method.loss(model, worst).loss
    eff_grads = torch.autograd.grad(efficient, list(model.parameters()))
    assert torch.allclose(efficient, naive, rtol=0, atol=1e-12)
    for g1, g2 in zip(eff_grads, naive_grads):
        assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-12)


def test_selected_copy_is_the_worst():
    model, x, y, method = _setup(6)
    model.eval()
    xs, ts = method.draw_copies(x, y, torch.Generator().manual_seed(5))
    with torch.no_grad():
        all_losses = per_example_loss(model(xs), ts).view(6, -1)
        xw, tw = method.select_worst(model, xs, ts, x.shape[0])
        chosen = per_example_loss(model(xw), tw)
    assert torch.allclose(chosen, all_losses.max(0).values)
    assert torch.equal(tw, y)


def test_copies_are_fresh_gaussian_noise_of_scale_sigma():
    _, x, y, method = _setup(4)
    xs, _ = method.draw_copies(x.float(), y, torch.Generator().manual_seed(0))
    noise = (xs - x.float().repeat(4, 1, 1, 1)).view(4, -1)
    assert abs(noise.std().item() - 0.5) < 0.02
    assert noise.mean().abs().item() < 0.02
    corr = torch.corrcoef(noise)  # copies are independent draws
    assert (corr - torch.eye(4)).abs().max() < 0.1


def test_scoring_does_not_update_batchnorm_running_stats():
    model, x, y, method = _setup(4)
    model.train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    method.prepare(model, x, y, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())


def test_train_mode_differs_from_naive_only_through_batch_statistics():
    """Documented subtlety: in train mode the naive version normalises with all m*B copies."""
    model, x, y, method = _setup(4)
    model.train()
    xs, ts = method.draw_copies(x, y, torch.Generator().manual_seed(3))
    naive = naive_maxup_loss(model, xs, ts, 4)
    efficient = method.loss(model, method.select_worst(model, xs, ts, x.shape[0])).loss
    assert torch.isfinite(efficient) and not torch.allclose(efficient, naive, atol=1e-9)


@pytest.mark.parametrize("kwargs, field", [({"copies": 0}, "copies"), ({"sigma": -0.1}, "sigma"),
                                           ({"sigma": 0.0}, "sigma"), ({"sigma": "a"}, "sigma")])
def test_bad_hyperparameters_are_field_errors(kwargs, field):
    """Named by the hyper-parameter (the CLI shows its flag); a string is refused, not a TypeError."""
    with pytest.raises(FieldError) as e:
        build_method("maxup", **kwargs)
    assert e.value.field == field and str(e.value).startswith(f"{field} must be")


@pytest.mark.parametrize("augment", ["mixup", "cutmix", "kmixup"])
def test_mixed_copies_get_no_noise_unless_sigma_is_given(augment):
    """MaxUp over mixup/CutMix/k-mixup adds Gaussian noise on top only when sigma is given (it
    used to add sigma = 0.25 silently). Constant images stay constant under any mixing."""
    x = torch.full((8, 1, 8, 8), 0.5)
    y = torch.arange(8) % 10
    plain = build_method("maxup", augment=augment, copies=2)
    plain.setup(num_classes=10)
    assert plain.hparams()["sigma"] == 0.0 and plain.family == "standard"
    xs, _ = plain.draw_copies(x, y, torch.Generator().manual_seed(0))
    assert torch.allclose(xs, torch.full_like(xs, 0.5), atol=1e-6)
    noisy = build_method("maxup", augment=augment, copies=2, sigma=0.25)
    noisy.setup(num_classes=10)
    xs, _ = noisy.draw_copies(x, y, torch.Generator().manual_seed(0))
    assert abs((xs - 0.5).std().item() - 0.25) < 0.05 and noisy.family == "smoothing"
    assert build_method("maxup").hparams()["sigma"] == 0.25       # Gaussian MaxUp keeps σ = 0.25


def test_mixing_alpha_defaults_to_the_augmentations_own():
    assert build_method("maxup", augment="kmixup").hparams()["mix_alpha"] == 10.0
    assert build_method("maxup", augment="mixup").hparams()["mix_alpha"] == 1.0
    assert build_method("maxup", augment="mixup", mix_alpha=0.4).hparams()["mix_alpha"] == 0.4
    assert build_method("maxup", augment="kmixup").hparams()["k"] == 16
    assert build_method("maxup", augment="kmixup", k=4).hparams()["k"] == 4


@pytest.mark.parametrize("augment, option", [("gaussian", "mix_alpha"), ("gaussian", "k"), ("mixup", "k"),
                                             ("cutmix", "k")])
def test_an_option_the_augmentation_does_not_use_is_refused_not_recorded(augment, option):
    """A user's ``--mix-alpha`` with Gaussian copies did nothing yet was recorded as if it had."""
    with pytest.raises(FieldError, match=f"{option} is not used by the {augment} augmentation"):
        build_method("maxup", augment=augment, **{option: 4})
    assert build_method("maxup", augment=augment).hparams()[option] is None
