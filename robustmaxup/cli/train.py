"""``robustmaxup train``: train a classifier with any registered method.

Example::

    robustmaxup train --dataset cifar10 --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --arch cifar_resnet110 --method maxup --sigma 0.25 --m 4 --epochs 90 --out runs/maxup

Method options (``--sigma``, ``--m``, ``--attack-eps``, ...) are generated from the registered
methods' hyper-parameters, so every method is trainable from here; giving an option the chosen
method does not take is an error naming the method's options. ``--awp GAMMA`` / ``--amp EPS``
wrap any method in a weight perturbation.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Sequence

from robustmaxup.cli.common import make_parser, run
from robustmaxup.engine import TrainConfig, train
from robustmaxup.errors import UserError
from robustmaxup.methods import METHODS, PERTURBATIONS
from robustmaxup.utils import parse_fraction

# Keys of TrainConfig that are not plain flags.
_STRUCTURED = {"method_args", "perturbation", "perturbation_args"}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _number(text: str) -> float:
    try:
        return parse_fraction(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _flag_type(annotation: Any, default: Any) -> Callable[[str], Any]:
    """argparse type for a dataclass field: floats accept fractions such as 8/255."""
    kind = annotation if isinstance(annotation, type) else type(default)
    if isinstance(annotation, str):
        kind = {"float": float, "int": int, "bool": bool, "str": str}.get(annotation.split("|")[0].strip(), type(default))
    return {bool: _parse_bool, float: _number, int: int}.get(kind, str)


def _method_fields() -> dict[str, tuple[Callable[[str], Any], list[str]]]:
    """Every hyper-parameter of every registered method -> (type, [method: default, ...])."""
    fields: dict[str, tuple[Callable[[str], Any], list[str]]] = {}
    for name in METHODS:
        cls = METHODS.get(name)
        hints = typing.get_type_hints(cls) if cls else {}
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            kind, users = fields.setdefault(f.name, (_flag_type(hints.get(f.name, f.type), default), []))
            note = f.metadata.get("help")
            users.append(f"{name}={default}" + (f" ({note})" if note else ""))
    return fields


def _perturbation_fields() -> list[tuple[str, str, str, Callable[[str], Any], Any]]:
    """(flag dest, perturbation, field, type, default) for ``--awp``/``--amp`` and their options."""
    out = []
    for name in PERTURBATIONS:
        cls = PERTURBATIONS.get(name)
        hints = typing.get_type_hints(cls)
        for i, f in enumerate(dataclasses.fields(cls)):
            default = f.default if f.default is not dataclasses.MISSING else None
            dest = name if i == 0 else f"{name}_{f.name}"
            out.append((dest, name, f.name, _flag_type(hints.get(f.name, f.type), default), default))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("train", "Train a classifier; writes config.json, metrics.jsonl, last.pt and best.pt to --out.")
    d = TrainConfig(dataset="", out="")
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", required=True, help="digits, cifar10, cifar100, imagenet")
    g.add_argument("--data-root", default=None, help="local dataset folder or .tar.gz (not needed for digits)")
    g.add_argument("--cache-dir", default=None, help="cache for decoded archives")
    g.add_argument("--arch", default=d.arch, help="architecture (robustmaxup.models.MODELS)")
    g.add_argument("--method", default=d.method, help="training method: " + ", ".join(METHODS.names()))
    g.add_argument("--out", required=True, help="run directory (must be empty or absent unless --resume)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")

    o = p.add_argument_group("optimisation (defaults: Cohen et al.'s CIFAR recipe)")
    o.add_argument("--epochs", type=int, default=d.epochs)
    o.add_argument("--batch", type=int, default=d.batch, help="global batch size")
    o.add_argument("--lr", type=float, default=d.lr)
    o.add_argument("--momentum", type=float, default=d.momentum)
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--schedule", default=d.schedule, choices=["step", "cosine"])
    o.add_argument("--lr-step", type=int, default=d.lr_step, help="step schedule: epochs between decays")
    o.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help="step schedule: decay factor")
    o.add_argument("--no-data-augment", dest="data_augment", action="store_false",
                   help="no random crop/flip of training images")
    o.add_argument("--val-size", type=int, default=d.val_size,
                   help="training images held out for best.pt selection (-1: min(1000, 10%%); 0: none)")
    o.add_argument("--max-train", type=int, default=d.max_train, help="use only the first N training images (0: all)")
    o.add_argument("--max-eval", type=int, default=d.max_eval, help="test images for the per-epoch metric (0: none)")
    o.add_argument("--eval-batch", type=int, default=d.eval_batch)

    r = p.add_argument_group("runtime")
    r.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1")
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers (ImageNet)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch logging")

    m = p.add_argument_group("method options (each used only by the methods listed)")
    for name, (kind, users) in sorted(_method_fields().items()):
        m.add_argument("--" + name.replace("_", "-"), dest=f"method__{name}", type=kind, default=None,
                       help="; ".join(users))
    w = p.add_argument_group("weight perturbation (wraps any method)")
    for dest, pert, field, kind, default in _perturbation_fields():
        flag = "--" + dest.replace("_", "-")
        w.add_argument(flag, dest=f"pert__{dest}", type=kind, default=None,
                       metavar=field.upper(), help=f"{pert}: {field} (default {default})")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args)
    method_args = {k.split("__", 1)[1]: v for k, v in values.items() if k.startswith("method__") and v is not None}
    chosen = sorted({pert for dest, pert, *_ in _perturbation_fields() if values.get(f"pert__{dest}") is not None})
    if len(chosen) > 1:
        raise UserError(f"choose one weight perturbation, not {' and '.join('--' + c for c in chosen)}")
    perturbation, pert_args = None, {}
    if chosen:
        perturbation = chosen[0]
        for dest, pert, field, *_ in _perturbation_fields():
            if pert == perturbation and values.get(f"pert__{dest}") is not None:
                pert_args[field] = values[f"pert__{dest}"]
        first = dataclasses.fields(PERTURBATIONS.get(perturbation))[0].name
        if first not in pert_args:
            raise UserError(f"--{perturbation}-* options need --{perturbation} itself")
    plain = {f.name: values[f.name] for f in dataclasses.fields(TrainConfig)
             if f.name not in _STRUCTURED and f.name in values}
    return TrainConfig(**plain, method_args=method_args, perturbation=perturbation, perturbation_args=pert_args)


def _body(args: argparse.Namespace) -> None:
    train(config_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    return run("train", _body, build_parser(), argv)
