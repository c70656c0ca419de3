"""Self-describing checkpoints: save atomically, load with ``weights_only=True``.

A robustmaxup checkpoint is a plain dict (no pickled code) with::

    format        "robustmaxup/1"
    arch, dataset, num_classes, in_channels, mean, std      -> enough to rebuild the model
    classes                                                  -> class names in output order
    method, hparams (sigma, m, ...), epoch, selection        -> how it was trained and chosen
    model, optimizer, scheduler, scaler, rng                 -> state for --resume
    config, metrics, version, git_sha, created               -> provenance

Reading is defensive: a file that is not a torch file (text, empty, a directory) or needs code
to unpickle is refused with one line, and the metadata are checked against a schema
(:func:`check_schema`: known names, types, sizes within reason, finite normalisation) before
anything is built from them, so a hostile file cannot make us allocate a model of terabytes.

Foreign formats are mapped here and nowhere else: Cohen et al.'s ``{'arch', 'state_dict'}``
files (keys under a normalise layer ``1.`` and ``module.``) load into our models, strictly. Such
files do not record their dataset: it defaults to the ``DATASETS`` entry whose ``foreign_archs``
names the architecture (ImageNet for ``resnet50``, CIFAR-10 for the CIFAR networks), and the
caller's ``dataset`` overrides it.

Class indices are mapped by name (:func:`map_classes`): output ``j`` of a loaded model scores
the evaluation data's class ``j``. The model's output order is the caller's declared one (the
CLI's ``--class-order``), else the checkpoint's recorded ``classes``; files that record none
(Cohen's, ours before they recorded it) are assumed to use the data's order, and say so.

This room sits above both ``models`` and ``data``, so it is also where a dataset name becomes a
model: :func:`build_model_for`.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import robustmaxup
from robustmaxup.data import DATASETS, foreign_dataset, get_info
from robustmaxup.errors import UserError, ref
from robustmaxup.models import MODELS, NormalizedModel, build_model
from robustmaxup.registry import Registry
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.dist import resolve_device
from robustmaxup.runtime.io import (
    atomic_torch_save, check_input_path, check_not_inputs, check_output_path, shown,
)
from robustmaxup.runtime.records import git_sha
from robustmaxup.runtime.text import error_summary, safe_text

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


#: the most classes / input channels a checkpoint may declare: a hostile or broken file must not
#: make us allocate a model of terabytes before anything is checked
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 64
_ZIP_MAGIC, _PICKLE_PROTO = b"PK\x03\x04", 0x80


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU with ``weights_only=True`` and check its metadata
    against the schema (:func:`check_schema`); UserError if it is missing, not a torch file,
    corrupt, needs code to unpickle (such files are refused, never executed), or declares
    metadata out of the schema."""
    path = check_input_path(path, "checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read checkpoint {shown(path)}: {e.strerror}") from None
    if not head:
        raise UserError(f"checkpoint {shown(path)} is empty (corrupt or not a torch file)")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTO:
        raise UserError(f"checkpoint {shown(path)} is corrupt or not a torch file (it starts with "
                        f"{head!r}, not a zip or pickle header)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"checkpoint {shown(path)} needs code to unpickle and was refused "
                        f"(weights_only=True): {_unpickle_reason(e)}") from None
    except MemoryError:
        raise UserError(f"checkpoint {shown(path)} does not fit in memory") from None
    except Exception as e:  # noqa: BLE001 - nothing ran (weights_only): any failure means a bad file
        raise UserError(f"checkpoint {shown(path)} is corrupt or not a torch file: {_first_line(e)}") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {shown(path)} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") == FORMAT:
        return check_schema(obj, path)
    if "state_dict" in obj and "arch" in obj:
        return check_schema(_from_cohen(obj, path), path)
    raise UserError(f"checkpoint {shown(path)} is not a robustmaxup or Cohen-format checkpoint")


def _unpickle_reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    hits = [line for line in lines if "Unsupported" in line or "GLOBAL" in line]
    return safe_text((hits or lines or ["unsafe content"])[0])[:160]


def _first_line(e: BaseException) -> str:
    return error_summary(e)


def _bad(path: Path, key: str, value: Any, expected: str) -> UserError:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return UserError(f"checkpoint {shown(path)} declares {key} {safe_text(text)}; expected {expected} "
                     "(a broken or foreign file)")


def _unregistered(path: Path, key: str, name: str, known: list[str], register: str) -> UserError:
    """A checkpoint naming an ``arch``/``dataset`` this process does not know: a user extension
    not registered yet (or a typo), not a broken file."""
    return UserError(f"checkpoint {shown(path)} was made with {key} {name!r}, which is not registered here "
                     f"(known: {', '.join(known)}); register it first ({register}, e.g. in a plugin: see "
                     "the README's Extending section)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_state(path: Path, key: str, state: Any) -> None:
    if not isinstance(state, dict) or not state:
        raise _bad(path, key, type(state).__name__ if not isinstance(state, dict) else state,
                   "a non-empty dict of weight tensors")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise _bad(path, f"{key} entry", name, "string names of tensors")


def check_schema(ckpt: dict[str, Any], path: str | os.PathLike = "<dict>") -> dict[str, Any]:
    """``ckpt`` if its metadata fit the schema, else a one-line UserError naming the key.

    Checked before anything is built from it: ``arch`` a name in ``MODELS``; ``dataset`` a name
    in ``DATASETS`` (None only for Cohen files); ``num_classes`` an integer in
    ``[1, MAX_CLASSES]``; ``in_channels`` None or an integer in ``[1, MAX_CHANNELS]``; ``mean``
    and ``std`` None or finite numbers, one per input channel or one for all (``std`` > 0);
    ``method`` a
    string; ``hparams`` a dict whose ``sigma`` is a finite number >= 0; ``epoch`` an integer
    >= 0; the weights a dict of tensors.
    """
    path = Path(path)
    arch = ckpt.get("arch")
    if isinstance(arch, str) and arch.isidentifier() and arch not in MODELS:  # a name, only unknown here
        raise _unregistered(path, "arch", arch, MODELS.names(), "robustmaxup.models.MODELS.register")
    if not isinstance(arch, str) or arch not in MODELS:
        raise _bad(path, "arch", arch, f"one of {', '.join(MODELS.names())}")
    dataset = ckpt.get("dataset")
    cohen = ckpt.get("format") == "cohen"
    if isinstance(dataset, str) and dataset.isidentifier() and dataset not in DATASETS:
        raise _unregistered(path, "dataset", dataset, DATASETS.names(), "robustmaxup.data.register_dataset")
    if not (isinstance(dataset, str) and dataset in DATASETS) and not (cohen and dataset is None):
        raise _bad(path, "dataset", dataset, f"one of {', '.join(DATASETS.names())}")
    classes = ckpt.get("num_classes")
    if not (_is_int(classes) and 1 <= classes <= MAX_CLASSES) and not (cohen and classes is None):
        raise _bad(path, "num_classes", classes, f"an integer in [1, {MAX_CLASSES}]")
    channels = ckpt.get("in_channels")
    if channels is not None and not (_is_int(channels) and 1 <= channels <= MAX_CHANNELS):
        raise _bad(path, "in_channels", channels, f"an integer in [1, {MAX_CHANNELS}]")
    if channels is None and dataset is not None:
        channels = get_info(dataset).in_channels
    for key in ("mean", "std"):
        value = ckpt.get(key)
        if value is None:
            continue
        if not isinstance(value, (list, tuple)) or not value or not all(_is_real(v) for v in value) \
                or (channels is not None and len(value) not in (1, channels)):
            raise _bad(path, key, value, f"finite numbers, one per input channel ({channels or 'any'}) "
                                         "or one for all")
        if key == "std" and not all(v > 0 for v in value):
            raise _bad(path, key, value, "positive numbers")
    names = ckpt.get("classes")
    if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names)
                                  and len(set(names)) == len(names) == classes):
        raise _bad(path, "classes", names, f"{classes} distinct class names")
    if ckpt.get("method") is not None and not isinstance(ckpt["method"], str):
        raise _bad(path, "method", ckpt["method"], "a method name")
    hparams = ckpt.get("hparams")
    if hparams is not None and not isinstance(hparams, dict):
        raise _bad(path, "hparams", hparams, "a dict of hyper-parameters")
    sigma = (hparams or {}).get("sigma")
    if sigma is not None and not (_is_real(sigma) and sigma >= 0):
        raise _bad(path, "hparams sigma", sigma, "a finite number >= 0")
    epoch = ckpt.get("epoch")
    if epoch is not None and not (_is_int(epoch) and epoch >= 0):
        raise _bad(path, "epoch", epoch, "an integer >= 0")
    _check_state(path, "net_state" if cohen else "model", ckpt.get("net_state" if cohen else "model"))
    return ckpt


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
    if not isinstance(arch, str) or arch not in MODELS:
        raise _bad(path, "arch", arch, f"one of {', '.join(MODELS.names())} (a Cohen checkpoint)")
    _check_state(path, "state_dict", obj["state_dict"])
    state = _strip_prefixes(obj["state_dict"])
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and fc.dim() >= 1 else None
    dataset = foreign_dataset(arch)
    epoch = obj.get("epoch")
    return {
        "format": "cohen",
        "arch": arch,
        "dataset": dataset,
        "num_classes": num_classes,
        "in_channels": get_info(dataset).in_channels if dataset is not None else None,
        "net_state": state,
        "method": "gaussian (Cohen et al. 2019)",
        "hparams": {},
        "epoch": epoch if _is_int(epoch) and epoch >= 0 else None,
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
                f"checkpoint was trained on {ckpt['dataset']!r}, not {dataset!r}; pass {ref('dataset', ckpt['dataset'])}"
            )
    if num_classes is not None and ckpt["num_classes"] not in (None, num_classes):
        raise UserError(
            f"checkpoint has {ckpt['num_classes']} classes but "
            + (f"dataset {dataset!r} has {num_classes}" if dataset in DATASETS and get_info(dataset).num_classes
               == num_classes else f"{ref('num_classes', num_classes)} was given")
        )
    if ckpt["dataset"] is None:
        raise UserError(f"{ckpt.get('format')} checkpoint of arch {ckpt['arch']!r} does not record "
                        f"its dataset and no dataset claims that arch; pass {ref('dataset')}")
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
    model = model_from_checkpoint(ckpt, dataset=dataset, num_classes=num_classes).to(resolve_device(device))
    meta = describe(ckpt)
    if dataset is not None:
        meta["dataset"] = dataset
    return model, meta


def class_order(model_classes: Sequence[str], data_classes: Sequence[str], *,
                what: str = "the checkpoint's classes") -> list[int] | None:
    """``order[j]``: the model output that scores data class ``j``, matching class names;
    ``None`` when the two orders agree. Names the model lacks (or a different count) are a
    UserError naming the first difference.

    Example::

        >>> class_order(["cat", "dog"], ["dog", "cat"])
        [1, 0]
    """
    model_classes, data_classes = [str(c) for c in model_classes], [str(c) for c in data_classes]
    if len(set(model_classes)) != len(model_classes):
        dup = next(c for c in model_classes if model_classes.count(c) > 1)
        raise UserError(f"{what} name class {dup!r} twice")
    if model_classes == data_classes:
        return None
    if sorted(model_classes) != sorted(data_classes):
        missing = [c for c in data_classes if c not in model_classes]
        detail = (f"the data's class {missing[0]!r} is not among them" if missing else
                  f"they are {len(model_classes)}, the data has {len(data_classes)}")
        raise UserError(f"{what} ({_names(model_classes)}) are not the data's ({_names(data_classes)}): "
                        f"{detail}; pass {ref('class_order')} with the model's output classes in order")
    return [model_classes.index(c) for c in data_classes]


def _names(names: Sequence[str], most: int = 4) -> str:
    shown_ = ", ".join(names[:most])
    return shown_ + (f", ... {len(names)} in all" if len(names) > most else "")


def map_classes(model: NormalizedModel, meta: dict[str, Any], data_classes: Sequence[str],
                declared: Sequence[str] | None = None, *, quiet: bool = False) -> dict[str, Any]:
    """Reorder ``model``'s outputs (in place) so that output ``j`` scores ``data_classes[j]``.

    The model's own output order is ``declared`` if given, else the checkpoint's recorded
    ``meta["classes"]``; with neither (Cohen-format files, older checkpoints) it is assumed to
    be the data's, and logged as assumed. Returns the record of what was done:
    ``{"class_source": "declared" | "checkpoint" | "assumed", "class_order": order or None}``
    (``order[j]``: the model output used for data class ``j``; ``None``: no reordering).
    ``quiet``: no log line (e.g. on every rank but the first of a sharded run).
    """
    say = (lambda *a: None) if quiet else log.info  # noqa: E731
    recorded = meta.get("classes")
    if declared is not None and recorded is not None and list(declared) != list(recorded):
        raise FieldError("class_order", f"disagrees with the classes the checkpoint records "
                                        f"({_names(list(recorded))}); drop it (it is for files that "
                                        "record none)")
    if declared is not None:
        source, names = "declared", list(declared)
    elif meta.get("classes") is not None:
        source, names = "checkpoint", list(meta["classes"])
    else:
        say("the checkpoint records no class names: assuming its outputs follow the data's "
            "class order (%s); %s declares them", _names(list(data_classes)), ref("class_order"))
        model.set_output_order(None)
        return {"class_source": "assumed", "class_order": None}
    what = f"{ref('class_order')}'s classes" if source == "declared" else "the checkpoint's classes"
    order = class_order(names, data_classes, what=what)
    model.set_output_order(order)
    if order is not None:
        say("%s are in another order than the data's: outputs reordered by name (data class j "
            "<- model output %s[j])", what, order)
    return {"class_source": source, "class_order": order}


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
        log.warning("warning: %s with %s, but the checkpoint was trained with sigma %g",
                    verb, ref("sigma", float(given)), trained)
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
    src, dst = Path(path), check_output_path(out, "out")
    check_not_inputs([("out", dst)], [("the checkpoint", src)])
    if os.path.lexists(dst):
        raise FieldError("out", f"{shown(dst)} already exists; choose another file")
    ckpt = read_checkpoint(src)
    model = model_from_checkpoint(ckpt)
    atomic_torch_save(exporter(ckpt, model), dst, exclusive=True)
    log.info("wrote %s (%s format, arch %s)", dst, fmt, ckpt["arch"])
    return dst
