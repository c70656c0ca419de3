"""Self-describing checkpoints: round trip, Cohen's format, refusal of pickled code."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from robustmaxup.checkpoints import checkpoint_sigma, load_model, read_checkpoint, save_checkpoint
from robustmaxup.errors import UserError
from robustmaxup.models import build_model


def _ckpt(model, **extra):
    return {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10, "model": model.state_dict(),
            "method": "maxup", "hparams": {"sigma": 0.25, "m": 4}, "epoch": 3, **extra}


def test_round_trip_is_exact_and_self_describing(tmp_path):
    model = build_model("digits_cnn", dataset="digits").eval()
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
    ours = build_model("cifar_resnet20", dataset="cifar10").eval()
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
    model = build_model("digits_cnn", dataset="digits")
    save_checkpoint(tmp_path / "c.pt", _ckpt(model))
    with pytest.raises(UserError, match="digits"):
        load_model(tmp_path / "c.pt", dataset="cifar10")
    with pytest.raises(UserError, match="classes"):
        load_model(tmp_path / "c.pt", dataset="digits", num_classes=100)
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
