"""Self-describing checkpoints: save atomically, load with ``weights_only=True``.

A robustmaxup checkpoint is a plain dict (no pickled code) with::

    format        "robustmaxup/1"
    arch, dataset, num_classes, in_channels, mean, std      -> enough to rebuild the model
    method, hparams (sigma, m, ...), epoch, selection        -> how it was trained and chosen
    model, optimizer, scheduler, scaler, rng                 -> state for --resume
    config, metrics, version, git_sha, created               -> provenance

Foreign formats are mapped here and nowhere else: Cohen et al.'s ``{'arch', 'state_dict'}``
files (keys under a normalise layer ``1.`` and ``module.``) load into our models, strictly.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

import robustmaxup
from robustmaxup.data.info import DATASET_INFO, get_info
from robustmaxup.errors import UserError
from robustmaxup.models import MODELS, NormalizedModel, build_model
from robustmaxup.utils import atomic_torch_save, git_sha

log = logging.getLogger(__name__)

FORMAT = "robustmaxup/1"
_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng")


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` atomically (temp file + rename), stamping format, version, SHA and time."""
    ckpt = dict(ckpt)
    ckpt.setdefault("format", FORMAT)
    ckpt.setdefault("version", robustmaxup.__version__)
    ckpt.setdefault("git_sha", git_sha())
    ckpt.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    for key in ("arch", "dataset", "num_classes", "model"):
        if key not in ckpt:
            raise ValueError(f"checkpoint is missing {key!r}")
    atomic_torch_save(ckpt, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU with ``weights_only=True``; UserError if it is missing,
    corrupt, or needs code to unpickle (such files are refused, never executed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise UserError(
            f"checkpoint {path} needs code to unpickle and was refused (weights_only=True): {first[:160]}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"checkpoint {path} is corrupt or not a torch file: {_first_line(e)}") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") == FORMAT:
        return obj
    if "state_dict" in obj and "arch" in obj:
        return _from_cohen(obj, path)
    raise UserError(f"checkpoint {path} is not a robustmaxup or Cohen-format checkpoint")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else type(e).__name__)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        while parts and parts[0] in ("module", "1", "_orig_mod"):
            parts = parts[1:]
        out[".".join(parts)] = value
    return out


def _from_cohen(obj: dict[str, Any], path: Path) -> dict[str, Any]:
    arch = obj["arch"]
    if arch not in MODELS:
        raise UserError(f"Cohen checkpoint {path} has arch {arch!r}, unknown here; known: {', '.join(MODELS.names())}")
    state = _strip_prefixes(obj["state_dict"])
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None else None
    dataset = "imagenet" if arch == "resnet50" else "cifar10"
    return {
        "format": "cohen",
        "arch": arch,
        "dataset": dataset,
        "num_classes": num_classes,
        "in_channels": 3,
        "net_state": state,
        "method": "gaussian (Cohen et al. 2019)",
        "hparams": {},
        "epoch": obj.get("epoch"),
    }


def describe(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's metadata without the (large) state tensors."""
    return {k: v for k, v in ckpt.items() if k not in _STATE_KEYS and k != "net_state"}


def checkpoint_sigma(ckpt: dict[str, Any]) -> float | None:
    """The training noise level recorded in the checkpoint, if any."""
    sigma = (ckpt.get("hparams") or {}).get("sigma")
    return float(sigma) if sigma is not None else None


def model_from_checkpoint(
    ckpt: dict[str, Any], *, dataset: str | None = None, num_classes: int | None = None
) -> NormalizedModel:
    """Rebuild the model of ``ckpt`` (strict load) on the CPU, in eval mode.

    ``dataset``/``num_classes`` are what the caller will use; a mismatch with the checkpoint
    raises a UserError rather than silently producing shifted labels.
    """
    if dataset is not None and dataset != ckpt["dataset"]:
        if ckpt.get("format") == "cohen" and dataset in DATASET_INFO:
            ckpt = {**ckpt, "dataset": dataset}  # Cohen files do not record their dataset
        else:
            raise UserError(
                f"checkpoint was trained on {ckpt['dataset']!r}, not {dataset!r}; pass --dataset {ckpt['dataset']}"
            )
    if num_classes is not None and ckpt["num_classes"] not in (None, num_classes):
        raise UserError(
            f"checkpoint has {ckpt['num_classes']} classes but dataset {dataset or ckpt['dataset']!r} has {num_classes}"
        )
    info = get_info(ckpt["dataset"])
    model = build_model(
        ckpt["arch"], ckpt["num_classes"] or info.num_classes, ckpt["dataset"],
        in_channels=ckpt.get("in_channels"), mean=ckpt.get("mean"), std=ckpt.get("std"),
    )
    try:
        if ckpt.get("format") == "cohen":
            model.net.load_state_dict(ckpt["net_state"], strict=True)
        else:
            model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit arch {ckpt['arch']!r}: {_first_line(e)}") from None
    return model.eval()


def load_model(
    path: str | os.PathLike, *, dataset: str | None = None, num_classes: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[NormalizedModel, dict[str, Any]]:
    """Read a checkpoint file and return ``(model on device in eval mode, metadata)``."""
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, dataset=dataset, num_classes=num_classes).to(device)
    meta = describe(ckpt)
    if dataset is not None:
        meta["dataset"] = dataset
    return model, meta
