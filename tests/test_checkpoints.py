"""Self-describing checkpoints: round trip, Cohen's format, refusal of pickled code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from robustmaxup.checkpoints import (
    build_model_for, checkpoint_sigma, load_model, read_checkpoint, save_checkpoint,
)
from robustmaxup.errors import UserError


def _ckpt(model, **extra):
    return {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10, "model": model.state_dict(),
            "method": "maxup", "hparams": {"sigma": 0.25, "m": 4}, "epoch": 3, **extra}


def test_round_trip_is_exact_and_self_describing(tmp_path):
    model = build_model_for("digits_cnn", "digits").eval()
    path = tmp_path / "c.pt"
    save_checkpoint(path, _ckpt(model))
    loaded, meta = load_model(path, dataset="digits")
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    assert meta["arch"] == "digits_cnn" and meta["epoch"] == 3 and meta["format"] == "robustmaxup/1"
    assert "version" in meta and "git_sha" in meta and "model" not in meta
    assert checkpoint_sigma(meta) == 0.25
    assert not [p for p in os.listdir(tmp_path) if p != "c.pt"], "temporary files left behind"


def test_cohen_format_maps_onto_our_model(tmp_path):
    ours = build_model_for("cifar_resnet20", "cifar10").eval()
    # Cohen et al. save Sequential(NormalizeLayer, net): keys '1.<name>' ('1.module.<name>' under DataParallel).
    state = {f"1.module.{k}": v for k, v in ours.net.state_dict().items()}
    torch.save({"arch": "cifar_resnet20", "state_dict": state, "epoch": 90}, tmp_path / "cohen.pth.tar")
    loaded, meta = load_model(tmp_path / "cohen.pth.tar", dataset="cifar10")
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(loaded(x), ours(x))
    assert meta["format"] == "cohen"


def test_pickled_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"arch": "digits_cnn", "state_dict": Evil()}, f)
    torch.save({"arch": "digits_cnn", "state_dict": {}, "payload": Evil()}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(UserError):
            read_checkpoint(p)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_corrupt_files_are_user_errors(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(UserError, match="corrupt"):
        read_checkpoint(p)


def test_mismatches_are_user_errors(tmp_path):
    model = build_model_for("digits_cnn", "digits")
    save_checkpoint(tmp_path / "c.pt", _ckpt(model))
    with pytest.raises(UserError, match="digits"):
        load_model(tmp_path / "c.pt", dataset="cifar10")
    with pytest.raises(UserError, match="classes"):
        load_model(tmp_path / "c.pt", dataset="digits", num_classes=100)
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


# --- dataset name -> model, and the default dataset of foreign checkpoints ---------------------


def test_build_model_for_reads_the_dataset_registry_and_explicit_arguments_win():
    from robustmaxup.data import get_info

    spec = get_info("digits")
    model = build_model_for("digits_cnn", "digits")
    assert model.net.fc.out_features == spec.num_classes
    assert model.net.features[0].in_channels == spec.in_channels
    assert model.normalize.mean.flatten().tolist() == pytest.approx(list(spec.mean))
    assert model.normalize.std.flatten().tolist() == pytest.approx(list(spec.std))
    custom = build_model_for("digits_cnn", "digits", num_classes=5, in_channels=3, mean=(0.3,), std=(0.4,))
    assert custom.net.fc.out_features == 5 and custom.net.features[0].in_channels == 3
    assert custom.normalize.mean.flatten().tolist() == pytest.approx([0.3])
    with pytest.raises(UserError, match="unknown dataset"):
        build_model_for("digits_cnn", "mnist")


def test_every_architecture_has_exactly_one_default_dataset_for_foreign_files():
    from robustmaxup.data import DATASETS
    from robustmaxup.models import MODELS

    for arch in MODELS.names():
        claims = [name for name in DATASETS if arch in DATASETS.get(name).foreign_archs]
        assert len(claims) == 1, (arch, claims)
    claimed = {a for name in DATASETS for a in DATASETS.get(name).foreign_archs}
    assert claimed <= set(MODELS.names()), claimed - set(MODELS.names())


@pytest.mark.parametrize("arch, dataset", [("resnet50", "imagenet"), ("cifar_resnet110", "cifar10"),
                                           ("cifar_resnet20", "cifar10"), ("wrn_28_10", "cifar10")])
def test_cohen_files_default_to_the_dataset_that_claims_their_arch(tmp_path, arch, dataset):
    path = tmp_path / "cohen.pth.tar"
    torch.save({"arch": arch, "state_dict": {"1.module.fc.weight": torch.zeros(7, 4)}}, path)
    ckpt = read_checkpoint(path)
    assert ckpt["format"] == "cohen" and ckpt["dataset"] == dataset and ckpt["num_classes"] == 7
    assert ckpt["in_channels"] == 3


def test_foreign_checkpoint_without_a_dataset_needs_one(tmp_path):
    from robustmaxup.checkpoints import model_from_checkpoint

    net = build_model_for("digits_cnn", "digits").net
    ckpt = {"format": "cohen", "arch": "digits_cnn", "dataset": None, "num_classes": 10,
            "in_channels": None, "net_state": net.state_dict()}
    with pytest.raises(UserError, match="pass dataset$"):
        model_from_checkpoint(ckpt)
    model = model_from_checkpoint(ckpt, dataset="digits")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model.net(x), net.eval()(x))


# ----------------------------------------------------------------------------- export
class _CohenNormalizeLayer(torch.nn.Module):
    """Like locuslab/smoothing's NormalizeLayer: constants as plain attributes (no state keys)."""

    def __init__(self, means, sds):
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x):
        return (x - self.means.view(1, -1, 1, 1)) / self.sds.view(1, -1, 1, 1)


@pytest.mark.parametrize("arch", ["cifar_resnet20", "resnet50"])
def test_export_cohen_loads_into_their_sequential_by_key_names(tmp_path, arch):
    from robustmaxup.checkpoints import build_model_for, export_checkpoint, load_model, save_checkpoint
    from robustmaxup.cli import main

    dataset = "imagenet" if arch == "resnet50" else "cifar10"
    model = build_model_for(arch, dataset).eval()
    src = tmp_path / "ours.pt"
    save_checkpoint(src, {"arch": arch, "dataset": dataset, "num_classes": model.net.fc.out_features,
                          "model": model.state_dict(), "method": "gaussian", "hparams": {"sigma": 0.25},
                          "epoch": 3})
    out = tmp_path / "cohen.pth.tar"
    assert main(["export", str(src), "--format", "cohen", "--out", str(out), "--quiet"]) == 0
    obj = torch.load(out, weights_only=True)
    assert obj["arch"] == arch and obj["epoch"] == 3
    # their model: Sequential(NormalizeLayer, net), with DataParallel's "module." for ResNet-50
    net = build_model_for(arch, dataset).net
    inner = torch.nn.DataParallel(net) if arch == "resnet50" else net
    theirs = torch.nn.Sequential(_CohenNormalizeLayer(model.normalize.mean.flatten().tolist(),
                                                      model.normalize.std.flatten().tolist()), inner)
    theirs.load_state_dict(obj["state_dict"], strict=True)
    x = torch.rand(2, 3, 64, 64) if arch == "resnet50" else torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(theirs.eval()(x), model(x))
    # and it round-trips through our own loader
    back, _ = load_model(out, dataset=dataset)
    torch.testing.assert_close(back(x), model(x))
    # never over an existing file, never over the checkpoint itself
    assert main(["export", str(src), "--format", "cohen", "--out", str(out), "--quiet"]) == 2
    assert main(["export", str(src), "--format", "state_dict", "--out", str(src), "--quiet"]) == 2
    plain = tmp_path / "plain.pt"
    export_checkpoint(src, plain, "state_dict")
    fresh = build_model_for(arch, dataset)
    fresh.load_state_dict(torch.load(plain, weights_only=True), strict=True)


# --- found missing by a mutation audit (2026-11-24) ----------------------------------------
def _save_weights(path, state):
    save_checkpoint(path, {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10, "model": state,
                           "method": "gaussian", "hparams": {"sigma": 0.25}, "epoch": 1})


@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_weights_that_do_not_fit_the_arch_are_refused(tmp_path, damage):  # kills M31
    state = build_model_for("digits_cnn", "digits").state_dict()
    if damage == "missing":
        del state[next(k for k in state if k.endswith("weight"))]
    else:
        state["net.extra_layer.weight"] = torch.zeros(3)
    _save_weights(tmp_path / "c.pt", state)
    with pytest.raises(UserError, match="do not fit"):
        load_model(tmp_path / "c.pt")
