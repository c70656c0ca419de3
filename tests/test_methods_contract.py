"""Contract tests parametrized over the method, weight-perturbation and augmentation registries:
finite loss, every parameter gets a gradient, the model's mode, ``requires_grad`` flags and weights
are left as they were; augmentations keep shapes and give valid targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmaxup.checkpoints import build_model_for
from robustmaxup.methods import AUGMENTATIONS, METHODS, PERTURBATIONS, build_method


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model_for("digits_cnn", "digits")


def _snapshot(model):
    return {k: v.clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, digits_batch):
    x, y = digits_batch
    method = build_method(name)
    method.setup(num_classes=10)
    model = _model().train()
    params = _snapshot(model)
    gen = torch.Generator().manual_seed(0)
    prepared = method.prepare(model, x, y, generator=gen)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters()), "prepare changed weights"
    assert all(p.grad is None for p in model.parameters()), "prepare left parameter gradients"
    out = method.loss(model, prepared)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: parameters without a finite gradient: {missing[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    if out.logits is not None:
        assert out.logits.shape[0] == out.targets.shape[0] and out.targets.dim() == 1


@pytest.mark.parametrize("name", METHODS.names())
def test_method_prepare_restores_each_submodule_mode_and_requires_grad(name, digits_batch):
    """Attacks inside ``prepare`` switch the model to eval mode and freeze its parameters; every
    submodule's own mode and every parameter's flag must come back exactly as they were."""
    x, y = digits_batch
    method = build_method(name)
    method.setup(num_classes=10)
    model = _model().train()
    model.net.features[1].eval()                  # a submodule with its own mode
    model.net.fc.bias.requires_grad_(False)       # a frozen parameter
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    method.prepare(model, x, y, generator=torch.Generator().manual_seed(0))
    assert all(m.training == mode for m, mode in modes), f"{name}: prepare changed a module's mode"
    assert all(p.requires_grad == flag for p, flag in flags), f"{name}: prepare changed requires_grad"


@pytest.mark.parametrize("registry", [METHODS, PERTURBATIONS, AUGMENTATIONS], ids=lambda r: r.kind)
def test_registry_entries_are_registered_under_their_own_name(registry):
    assert len(registry) > 0
    for name in registry:
        assert registry.get(name).name == name


@pytest.mark.parametrize("name", METHODS.names())
def test_method_evaluate_contract(name, digits_batch):
    x, y = digits_batch
    method = build_method(name)
    method.setup(num_classes=10)
    model = _model().eval()
    with torch.no_grad():
        correct = method.evaluate(model, x, y, generator=torch.Generator().manual_seed(1))
    assert correct.shape == y.shape and correct.dtype == torch.bool
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def _gaussian_step(batch):
    """A Gaussian method, a training-mode model and the method's prepared batch."""
    x, y = batch
    method = build_method("gaussian")
    method.setup(num_classes=10)
    model = _model().train()
    return method, model, method.prepare(model, x, y, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", PERTURBATIONS.names())
def test_weight_perturbation_contract(name, digits_batch):
    method, model, prepared = _gaussian_step(digits_batch)
    params = _snapshot(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    wrapper = PERTURBATIONS.get(name)()
    with wrapper.perturbed(model, lambda: method.loss(model, prepared).loss):
        changed = any(not torch.equal(params[k], v) for k, v in model.named_parameters())
        method.loss(model, prepared).loss.backward()
    assert changed, f"{name} did not perturb the weights"
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters()), "weights not restored exactly"
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert model.training
    # Only the training forward may update BatchNorm statistics, not the perturbation search.
    for k, v in model.named_buffers():
        if k.endswith("num_batches_tracked"):
            assert v.item() == buffers[k].item() + 1, f"{name}: BN statistics updated by the search"


@pytest.mark.parametrize("name", PERTURBATIONS.names())
def test_weight_perturbation_warmup_leaves_weights_alone(name, digits_batch):
    """During ``warmup`` epochs the wrapper is inactive: no perturbation, nothing to restore."""
    method, model, prepared = _gaussian_step(digits_batch)
    wrapper = PERTURBATIONS.get(name)(warmup=2)
    assert set(wrapper.hparams()) >= {"warmup"}
    wrapper.on_epoch_start(0, 10)
    params = _snapshot(model)
    with wrapper.perturbed(model, lambda: method.loss(model, prepared).loss) as deltas:
        assert deltas == []
        assert all(torch.equal(params[k], v) for k, v in model.named_parameters())
    wrapper.on_epoch_start(2, 10)
    with wrapper.perturbed(model, lambda: method.loss(model, prepared).loss) as deltas:
        assert len(deltas) > 0


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_augmentation_contract(name, digits_batch):
    x, y = digits_batch
    x_before = x.clone()
    aug = AUGMENTATIONS.get(name)()
    x_aug, target = aug(x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x_before), f"{name} changed its input in place"
    assert x_aug.shape == x.shape and x_aug.dtype == x.dtype and torch.isfinite(x_aug).all()
    if aug.mixes_labels:
        assert target.shape == (x.shape[0], 10) and target.dtype == x.dtype
        assert (target >= 0).all() and torch.allclose(target.sum(1), torch.ones(x.shape[0]))
        assert torch.equal(target.sum(0).round(), torch.bincount(y, minlength=10).to(x.dtype)), \
            "a permutation pairing conserves the label mass per class"
    else:
        assert torch.equal(target, y)
    again = aug(x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x_aug) and torch.equal(again[1], target), "not seeded by the generator"
    # A single draw may leave the batch as it was (e.g. an empty CutMix box); a few may not.
    draws = [aug(x, y, num_classes=10, generator=torch.Generator().manual_seed(s))[0] for s in range(1, 5)]
    assert any(not torch.equal(d, x) for d in draws), f"{name} never changes the batch"
    assert any(not torch.equal(d, x_aug) for d in draws), "fresh randomness per generator state"


# --- found missing by a mutation audit (2026-11-24): noise where it must be ------------------
class Spy(nn.Module):
    """Records every input batch; predicts class 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], 10) + 0 * self.w


def test_maxup_noise_is_fresh_per_batch_and_follows_generator():
    method = build_method("maxup", sigma=0.5, copies=3)
    method.setup(num_classes=10)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    g = torch.Generator().manual_seed(0)
    a, _ = method.draw_copies(x, y, g)
    b, _ = method.draw_copies(x, y, g)            # the next batch: new noise
    c, _ = method.draw_copies(x, y, torch.Generator().manual_seed(1))
    noise = torch.cat([a, b, c]).sub(x.repeat(9, 1, 1, 1)).view(9, -1)
    corr = torch.corrcoef(noise)
    assert (corr - torch.eye(9)).abs().max() < 0.15


@pytest.mark.parametrize("name,kw,sigma", [
    ("maxup", {"sigma": 0.5}, 0.5), ("maxup", {"augment": "mixup"}, 0.0),
    ("gaussian", {"sigma": 0.5}, 0.5), ("consistency", {"sigma": 0.5}, 0.5),
    ("macer", {"sigma": 0.5}, 0.5), ("smoothadv", {"sigma": 0.5}, 0.5), ("smoothmix", {"sigma": 0.5}, 0.5)])
def test_smoothing_validation_classifies_one_noisy_draw_at_sigma(name, kw, sigma):
    method = build_method(name, **kw)
    method.setup(num_classes=10)
    x, y = torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)
    spy = Spy().eval()
    with torch.no_grad():
        correct = method.evaluate(spy, x, y, generator=torch.Generator().manual_seed(0))
    assert correct.all() and len(spy.seen) == 1
    assert (spy.seen[0] - x).std().item() == pytest.approx(sigma, abs=0.02)


def test_gaussian_prepare_adds_sigma_noise():
    method = build_method("gaussian", sigma=0.5)
    method.setup(num_classes=10)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    xs, ys = method.prepare(Spy(), x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ys, y) and (xs - x).std().item() == pytest.approx(0.5, abs=0.02)
    assert (xs - x).mean().abs().item() < 0.02
