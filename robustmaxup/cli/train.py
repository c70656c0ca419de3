"""``robustmaxup train``: train a classifier with any registered method.

Example::

    robustmaxup train --dataset cifar10 --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --arch cifar_resnet110 --method maxup --sigma 0.25 --m 4 --epochs 90 --out runs/maxup
    robustmaxup train --config runs/maxup/config.json --seed 1 --out runs/maxup-seed1

Every flag is generated from :func:`robustmaxup.train.options` (the config's fields, every
registered method's hyper-parameters, the weight perturbations' options), so every method is
trainable from here; an option the chosen method does not take is an error naming the method's
options. ``--awp GAMMA`` / ``--amp EPS`` wrap any method in a weight perturbation.

``--config`` replays a run: its ``config.json`` is the base layer and only the flags given on
this command line override it (a flag equal to its default still does). This module only
parses: values -> :class:`~robustmaxup.train.TrainConfig` -> :func:`~robustmaxup.train.train`.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping, Sequence

from robustmaxup.cli.common import make_parser, run, setup_logging
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import parse_fraction
from robustmaxup.train import TrainConfig, merge_flat, options, read_flat, train

_GIVEN_ONLY = argparse.SUPPRESS  # a flag not given is absent from the parsed values


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
        raise argparse.ArgumentTypeError(getattr(e, "problem", str(e))) from None


_TYPES: dict[type, Callable[[str], Any]] = {bool: _parse_bool, float: _number, int: int, str: str}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("train", "Train a classifier; writes config.json, metrics.jsonl, last.pt and "
                             "best.pt to --out.")
    p.add_argument("--config", default=_GIVEN_ONLY, metavar="CONFIG_JSON",
                   help="replay a run: its config.json gives the values, flags given here override them")
    groups: dict[str, Any] = {}
    for opt in options():
        group = groups.get(opt.group) or groups.setdefault(opt.group, p.add_argument_group(opt.group))
        text = opt.help.replace("%", "%%")
        if opt.switch:
            group.add_argument(opt.flag, dest=opt.name, action="store_const", const=not opt.default,
                               default=_GIVEN_ONLY, help=text)
            continue
        if opt.required:
            text += " (required unless --config gives it)"
        elif opt.default is not None:
            text += f" (default: {opt.default})"
        group.add_argument(opt.flag, dest=opt.name, type=_TYPES[opt.type], choices=opt.choices,
                           metavar=opt.metavar, default=_GIVEN_ONLY, help=text)
    return p


def _flags() -> dict[str, str]:
    """Library field -> this command's flag, for one-line errors."""
    return {"config": "--config", **{opt.name: opt.flag for opt in options()}}


def _check_perturbation_flags(given: Mapping[str, Any], flat: Mapping[str, Any]) -> None:
    """``--awp-warmup`` and the like modify a perturbation that ``--awp`` (here or in the base
    layers) switches on."""
    opts = [opt for opt in options() if opt.perturbation]
    for main in (opt for opt in opts if opt.main):
        if main.name not in flat and any(o.name in given for o in opts if o.perturbation == main.perturbation):
            raise UserError(f"{main.flag}-* options need {main.flag} itself")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config of parsed flags: the layers (``--config``'s file, later a recipe) as the base,
    the flags given explicitly on top."""
    given = {k: v for k, v in vars(args).items() if k != "config"}
    layers = [read_flat(args.config)] if "config" in vars(args) else []
    flat = merge_flat(*layers, given)
    _check_perturbation_flags(given, flat)
    return TrainConfig.from_flat(flat)


def _body(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    setup_logging(cfg.quiet)  # --config may set it
    train(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    return run("train", _body, build_parser(), argv, flags=_flags())
