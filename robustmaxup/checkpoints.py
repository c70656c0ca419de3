"""Self-describing checkpoints: save atomically, load with ``weights_only=True``.

A robustmaxup checkpoint is a plain dict (no pickled code) with::

    format        "robustmaxup/1"
    arch, dataset, num_classes, in_channels, mean, std      -> enough to rebuild the model
    method, hparams (sigma, m, ...), epoch, selection        -> how it was trained and chosen
    model, optimizer, scheduler, scaler, rng                 -> state for --resume
    config, metrics, version, git_sha, created               -> provenance

Foreign formats are mapped here and nowhere else: Cohen et al.'s ``{'arch', 'state_dict'}``
files (keys under a normalise layer ``1.`` and ``module.``) load into our models, strictly. Such
files do not record their dataset: it defaults to the ``DATASETS`` entry whose ``foreign_archs``
names the architecture (ImageNet for ``resnet50``, CIFAR-10 for the CIFAR networks), and the
caller's ``dataset`` overrides it.

This room sits above both ``models`` and ``data``, so it is also where a dataset name becomes a
model: :func:`build_model_for`.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch

import robustmaxup
from robustmaxup.data import DATASETS, foreign_dataset, get_info
from robustmaxup.errors import UserError
from robustmaxup.models import MODELS, NormalizedModel, build_model
from robustmaxup.registry import Registry
from robustmaxup.runtime.io import atomic_torch_save, check_writable_location
from robustmaxup.runtime.records import git_sha

log = logging.getLogger(__name__)

FORMAT = "robustmaxup/1"
_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng")


def build_model_for(
    arch: str,
    dataset: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> NormalizedModel:
    """Build ``arch`` for dataset ``dataset``: class count, input channels and normalisation come
    from its ``DATASETS`` entry; explicit (non-None, non-zero) arguments override them.
    Unknown ``arch`` or ``dataset`` raises a UserError listing the known ones.

    Example::

        model = build_model_for("cifar_resnet110", "cifar10")     # 10 classes, CIFAR-10 mean/std
    """
    spec = get_info(dataset)
    return build_model(
        arch, num_classes or spec.num_classes, in_channels=in_channels or spec.in_channels,
        mean=mean if mean is not None else spec.mean, std=std if std is not None else spec.std,
    )


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
    dataset = foreign_dataset(arch)
    return {
        "format": "cohen",
        "arch": arch,
        "dataset": dataset,
        "num_classes": num_classes,
        "in_channels": get_info(dataset).in_channels if dataset is not None else None,
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
        if ckpt.get("format") == "cohen" and dataset in DATASETS:
            # Cohen files do not record their dataset: the caller's one decides.
            ckpt = {**ckpt, "dataset": dataset, "in_channels": get_info(dataset).in_channels}
        else:
            raise UserError(
                f"checkpoint was trained on {ckpt['dataset']!r}, not {dataset!r}; pass --dataset {ckpt['dataset']}"
            )
    if num_classes is not None and ckpt["num_classes"] not in (None, num_classes):
        raise UserError(
            f"checkpoint has {ckpt['num_classes']} classes but dataset {dataset or ckpt['dataset']!r} has {num_classes}"
        )
    if ckpt["dataset"] is None:
        raise UserError(f"{ckpt.get('format')} checkpoint of arch {ckpt['arch']!r} does not record "
                        f"its dataset and no dataset claims that arch; pass --dataset")
    model = build_model_for(
        ckpt["arch"], ckpt["dataset"], num_classes=ckpt["num_classes"],
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


def resolve_sigma(given: float | None, meta: dict[str, Any], *, verb: str,
                  missing_hint: str) -> tuple[float, str]:
    """σ from the caller, else the checkpoint's training σ: ``(sigma, "flag" | "checkpoint")``.
    A given σ that differs from the training σ is allowed, with a one-line warning."""
    trained = checkpoint_sigma(meta)
    if given is None:
        if trained is None:
            raise UserError(f"the checkpoint records no training sigma; {missing_hint}")
        return trained, "checkpoint"
    if trained is not None and abs(given - trained) > 1e-12:
        log.warning("warning: %s with --sigma %g, but the checkpoint was trained with sigma %g",
                    verb, given, trained)
    return float(given), "flag"


# --- export: formats other tools load ----------------------------------------------------------

# locuslab/smoothing code/architectures.py, get_architecture: the ImageNet ResNet-50 is wrapped in
# torch.nn.DataParallel (keys "1.module.*"), the CIFAR ResNets are not (keys "1.*"); the
# NormalizeLayer at index 0 keeps its constants as plain attributes, so it has no state keys.
_COHEN_DATAPARALLEL = frozenset({"resnet50"})

#: format name -> ``(checkpoint dict, model) -> object to torch.save``
EXPORT_FORMATS: Registry[Any] = Registry("export format")


@EXPORT_FORMATS.register("cohen")
def _export_cohen(ckpt: dict[str, Any], model: NormalizedModel) -> dict[str, Any]:
    prefix = "1.module." if ckpt["arch"] in _COHEN_DATAPARALLEL else "1."
    state = {prefix + k: v for k, v in model.net.state_dict().items()}
    return {"arch": ckpt["arch"], "state_dict": state, "epoch": ckpt.get("epoch")}


@EXPORT_FORMATS.register("state_dict")
def _export_state_dict(ckpt: dict[str, Any], model: NormalizedModel) -> dict[str, torch.Tensor]:
    return model.state_dict()


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, fmt: str) -> Path:
    """Write checkpoint ``path`` to ``out`` in format ``fmt`` (a key of :data:`EXPORT_FORMATS`):

    * ``cohen``: ``{"arch", "state_dict", "epoch"}`` whose keys fit locuslab/smoothing's
      ``Sequential(NormalizeLayer, net)`` (that code re-creates the normalisation from the
      dataset name; CIFAR/ImageNet constants are the ones it uses);
    * ``state_dict``: our model's plain ``state_dict`` (normalisation buffers included).

    ``out`` must not exist and must not be ``path`` itself. Returns ``out``.
    """
    exporter = EXPORT_FORMATS.get(fmt)
    src, dst = Path(path), Path(out)
    if dst.exists():
        if src.exists() and dst.resolve() == src.resolve():
            raise UserError(f"--out {dst} is the checkpoint itself; choose another file")
        raise UserError(f"--out {dst} already exists; choose another file")
    check_writable_location(dst)
    ckpt = read_checkpoint(src)
    model = model_from_checkpoint(ckpt)
    atomic_torch_save(exporter(ckpt, model), dst)
    log.info("wrote %s (%s format, arch %s)", dst, fmt, ckpt["arch"])
    return dst
