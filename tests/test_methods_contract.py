"""Contract tests parametrized over the method and weight-perturbation registries: finite loss,
every parameter gets a gradient, the model's mode and weights are left as they were."""

from __future__ import annotations

import pytest
import torch

from robustmaxup.methods import METHODS, PERTURBATIONS, build_method
from robustmaxup.models import build_model


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("digits_cnn", dataset="digits")


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
    if out.logits is not None:
        assert out.logits.shape[0] == out.targets.shape[0] and out.targets.dim() == 1


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


@pytest.mark.parametrize("name", PERTURBATIONS.names())
def test_weight_perturbation_contract(name, digits_batch):
    x, y = digits_batch
    method = build_method("gaussian")
    method.setup(num_classes=10)
    model = _model().train()
    prepared = method.prepare(model, x, y, generator=torch.Generator().manual_seed(0))
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
