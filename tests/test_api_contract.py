"""The Python API's contract where a user calls it directly (found by an audit of the library
as a researcher would use it): a model whose output width is not ``num_classes`` is refused
instead of miscounted, bad arguments are FieldErrors naming the argument, attacks refuse
inputs outside [0, 1], and a float64 model is certified and attacked in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmaxup.attacks import AttackConfig, SoftSmoothed, pgd, run_autoattack, smooth_pgd
from robustmaxup.attacks.runner import evaluate_dataset
from robustmaxup.certify import Smooth
from robustmaxup.certify.runner import certify_dataset, predict_dataset
from robustmaxup.checkpoints import load_model
from robustmaxup.data import load_split, select_indices, spread_indices
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError


class Halves(nn.Module):
    """10 outputs: dark images (mean < 1/2) vote 7, bright ones 1; one parameter so it has a dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = x.flatten(1).mean(1) >= 0.5
        out = torch.zeros(len(x), 10, dtype=x.dtype) + 0 * self.w
        out[~bright, 7] = 1
        out[bright, 1] = 1
        return out


def _gens(k: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(k)]


def test_a_model_wider_than_num_classes_is_refused_not_miscounted():
    """With num_classes=5 the votes for class 7 used to land in the next image's class 2, so a
    dark image gave its votes away and a bright one was certified on 2n votes."""
    xs = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    with pytest.raises(UserError, match=r"logits of shape \(10,\) per image, but Smooth was given num_classes=5"):
        Smooth(Halves(), num_classes=5, sigma=0.01).certify_batch(xs, 10, 100, 1e-3, 1000, _gens(2))
    certs = Smooth(Halves(), num_classes=10, sigma=0.01).certify_batch(xs, 10, 100, 1e-3, 1000, _gens(2))
    assert [c.prediction for c in certs] == [7, 1] and [sum(c.counts) for c in certs] == [100, 100]


@pytest.mark.parametrize("make, field", [
    (lambda: Smooth(Halves(), 10, "0.25"), "sigma"),
    (lambda: Smooth(Halves(), 1, 0.25), "num_classes"),
    (lambda: Smooth(Halves(), 10, 0.25, noise_chunk=0), "noise_chunk"),
    (lambda: Smooth(Halves(), 10, 0.25).certify(torch.rand(1, 8, 8), 10, 100.5, 1e-3, 100), "n"),
    (lambda: Smooth(Halves(), 10, 0.25).certify(torch.rand(1, 8, 8), 10, 100, 1e-3, 0), "batch_size"),
    (lambda: Smooth(Halves(), 10, 0.25).certify(torch.rand(1, 8, 8).double(), 10, 100, 1e-3, 100), "x"),
    (lambda: Smooth(Halves(), 10, 0.25).certify(torch.zeros(1, 8, 8, dtype=torch.uint8), 10, 100, 1e-3, 100), "x"),
    (lambda: Smooth(Halves(), 10, 0.25).certified_correct(torch.rand(2, 1, 8, 8), torch.tensor([10, 0]), 0.1,
                                                           100, 1e-3, 100, _gens(2)), "labels"),
])
def test_bad_arguments_are_field_errors_naming_the_argument(make, field):
    with pytest.raises(FieldError) as e:
        make()
    assert e.value.field == field, str(e.value)


def test_attacks_refuse_inputs_outside_the_unit_box_unless_told_they_are_in_it():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([1, 7, 1])
    normalised = (x - 0.3) / 0.37
    with pytest.raises(UserError, match=r"inputs must lie in \[0, 1\]"):
        pgd(model, normalised, y, eps=8 / 255, steps=1)
    with pytest.raises(UserError, match=r"inputs must lie in \[0, 1\]"):
        smooth_pgd(model, normalised, y, eps=0.5, sigma=0.25, m=2, steps=1)
    pgd(model, x, y, eps=8 / 255, steps=1, check_inputs=False)            # the training methods' path
    with pytest.raises(UserError, match="same number of examples"):
        pgd(model, x, y[:2], eps=0.1, steps=1)
    with pytest.raises(UserError, match="delta_init must have x's shape"):
        pgd(model, x, y, eps=0.1, steps=1, delta_init=torch.zeros(1, 1, 4, 4))
    with pytest.raises(FieldError) as e:
        run_autoattack(model, x, y, eps=0.1, batch_size=0)
    assert e.value.field == "batch_size"


def test_float64_models_are_certified_and_attacked_in_float64(digits_checkpoint):
    model, _ = load_model(digits_checkpoint, dataset="digits")
    model64 = model.double()
    split = load_split("digits", "test")
    rows = certify_dataset(Smooth(model64, 10, 0.25), split, [0, 1], n0=10, n=100, progress=False)
    assert len(rows) == 2 and all(r.predict >= -1 for r in rows)
    assert len(predict_dataset(Smooth(model64, 10, 0.25), split, [0], n=50, progress=False)) == 1
    result = evaluate_dataset(model64, split, [0, 1, 2], AttackConfig(eps=0.5, attack="pgd", norm="L2", steps=2),
                              seed=0, progress=False)
    assert 0.0 <= result.record["robust_accuracy"] <= 1.0
    x, y = split.batch([0, 1, 2])

    def short(adversary):
        adversary.apgd.n_iter, adversary.apgd.n_restarts = 2, 1

    res = run_autoattack(model64, x.double(), y, eps=0.5, norm="L2", version="custom", attacks=["apgd-ce"],
                         configure=short)
    assert res.x_adv.dtype == torch.float64
    assert SoftSmoothed(model64, 0.25, 4)(x.double()).dtype == torch.float64


def test_your_own_tensors_go_through_image_split_from_tensors(digits_checkpoint):
    """A torch Dataset is refused in one line that names the way in; the same images as an
    ImageSplit give exactly the rows of the loaded split (noise is keyed by index)."""
    from torch.utils.data import TensorDataset

    from robustmaxup.data import ImageSplit, get_info

    model, _ = load_model(digits_checkpoint, dataset="digits")
    split = load_split("digits", "test")
    x, y = split.batch([0, 1, 2])
    smooth = Smooth(model, 10, 0.25)
    with pytest.raises(UserError, match="ImageSplit.from_tensors"):
        certify_dataset(smooth, TensorDataset(x, y), [0, 1], n0=10, n=100, progress=False)
    with pytest.raises(UserError, match="ImageSplit.from_tensors"):
        evaluate_dataset(model, TensorDataset(x, y), [0], AttackConfig(eps=0.1, attack="pgd"), seed=0,
                         progress=False)
    mine = ImageSplit.from_tensors(x, y, get_info("digits"))
    rows = [(r.idx, r.label, r.predict, r.radius) for r in
            certify_dataset(smooth, mine, [0, 1, 2], n0=10, n=100, progress=False)]
    assert rows == [(r.idx, r.label, r.predict, r.radius) for r in
                    certify_dataset(smooth, split, [0, 1, 2], n0=10, n=100, progress=False)]
    with pytest.raises(FieldError, match=r"indices must lie in \[0, 3\)"):
        certify_dataset(smooth, mine, [3], n0=10, n=100, progress=False)
    for bad, match in (((x * 2, y), r"\[0, 1\]"), ((x[:, :, :4], y), "must be"), ((x, y + 10), "labels")):
        with pytest.raises(UserError, match=match):
            ImageSplit.from_tensors(*bad, get_info("digits"))


@pytest.mark.parametrize("call, field", [
    (lambda: select_indices(100, 0), "skip"),
    (lambda: select_indices(100, 1, -5), "max_images"),
    (lambda: select_indices(100, 1, 0), "max_images"),
    (lambda: spread_indices(10, -1), "k"),
])
def test_index_selection_refuses_what_it_cannot_mean(call, field):
    with pytest.raises(FieldError) as e:
        call()
    assert e.value.field == field


def test_resume_of_a_missing_output_says_it_starts_it(digits_checkpoint, tmp_path, caplog):
    import logging

    model, _ = load_model(digits_checkpoint, dataset="digits")
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        certify_dataset(Smooth(model, 10, 0.25), load_split("digits", "test"), [0], n0=10, n=50,
                        out=tmp_path / "typo.tsv", resume=True, progress=False)
    assert "typo.tsv does not exist yet; starting it" in caplog.text
