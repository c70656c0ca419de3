"""``robustmaxup train``: train a classifier with any registered method.

Example::

    robustmaxup train --recipe smoothadv --dataset cifar10 --data-root DATA --out runs/smoothadv
    robustmaxup train --dataset cifar10 --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --arch cifar_resnet110 --method maxup --sigma 0.25 --copies 4 --epochs 90 --out runs/maxup
    robustmaxup train --config runs/maxup/config.json --seed 1 --out runs/maxup-seed1
    robustmaxup train --list-recipes

Every flag is generated from :func:`robustmaxup.train.options` (the config's fields, every
registered method's hyper-parameters, the weight perturbations' options), so every method is
trainable from here; an option the chosen method does not take is an error naming the method's
options. ``--awp-gamma GAMMA`` / ``--amp-eps EPS`` wrap any method in a weight perturbation.
A former flag (``--m``, ``--m-train``, ``--eta``, ``--awp``, ``--amp``...) is an error naming the
flag that replaced it.

``--recipe NAME`` takes a paper's published set-up as the base layer; ``--config`` replays a run:
its ``config.json`` is the base layer. In both, only the flags given on this command line
override it (a flag equal to its default still does). This module only parses: values ->
:class:`~robustmaxup.train.TrainConfig` -> :func:`~robustmaxup.train.train`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Mapping, Sequence

from robustmaxup.cli.args import add_renamed, make_parser
from robustmaxup.cli.common import error_line, flag_for, run, setup_logging
from robustmaxup.errors import UserError, flags_named
from robustmaxup.runtime.checks import parse_fraction
from robustmaxup.train import TrainConfig, base_layers, merge_flat, options, train
from robustmaxup.train.config import RENAMED, SCHEDULE_PARAMS, replaced_by
from robustmaxup.train.recipes import recipe_table

_GIVEN_ONLY = argparse.SUPPRESS  # a flag not given is absent from the parsed values
_NOT_CONFIG = ("config", "list_recipes")


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


def _dashes(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("train", "Train a classifier; writes config.json, metrics.jsonl, last.pt and "
                             "best.pt to --out.")
    p.add_argument("--config", default=_GIVEN_ONLY, metavar="CONFIG_JSON",
                   help="replay a run: its config.json gives the values; --recipe and flags given here override them")
    p.add_argument("--list-recipes", action="store_true", default=_GIVEN_ONLY,
                   help="print every recipe (values and sources) and exit")
    add_renamed(p, {_dashes(old): replaced_by(old, _dashes) for old in RENAMED})
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
        elif opt.default not in (None, ()):
            text += f" (default: {opt.default})"
        group.add_argument(opt.flag, dest=opt.name, type=_TYPES[opt.type], choices=opt.choices,
                           metavar=opt.metavar, nargs=opt.nargs, default=_GIVEN_ONLY, help=text)
    return p


def _flags() -> dict[str, str]:
    """Library field -> this command's flag, for one-line errors."""
    return {"config": "--config", **{opt.name: opt.flag for opt in options()}}


def _check_perturbation_flags(given: Mapping[str, Any], flat: Mapping[str, Any]) -> None:
    """``--awp-warmup`` and the like modify a perturbation that ``--awp-gamma`` (here, in the
    recipe or in the base layers) switches on."""
    opts = [opt for opt in options() if opt.perturbation]
    for main in (opt for opt in opts if opt.main):
        if main.name not in flat and any(o.name in given for o in opts if o.perturbation == main.perturbation):
            raise UserError(f"--{main.perturbation}-* options need {main.flag} itself")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config of parsed flags: the layers (``--config``'s file, or the resumed run's own;
    ``--recipe``'s values) as the base, the flags given explicitly on top."""
    given = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    layers = base_layers(vars(args).get("config"), out=given.get("out"), resume=bool(given.get("resume")))
    flat = merge_flat(*layers, given)
    _check_perturbation_flags(given, flat)
    cfg = TrainConfig.from_flat(flat)
    _check_schedule_flags(given, cfg)
    return cfg


def _check_schedule_flags(given: Mapping[str, Any], cfg: TrainConfig) -> None:
    """A schedule flag given for a schedule that does not read it (``SCHEDULE_PARAMS``)."""
    used = SCHEDULE_PARAMS.get(cfg.schedule, ())
    for name in ("lr_step", "lr_milestones", "lr_gamma"):
        if name in given and name not in used:
            users = [k for k, v in SCHEDULE_PARAMS.items() if name in v]
            raise UserError(f"--{name.replace('_', '-')} applies to --schedule {' or '.join(users)}; this "
                            f"run's schedule is {cfg.schedule}")


def _body(args: argparse.Namespace) -> None:
    if "list_recipes" in vars(args):
        others = sorted(k for k in vars(args) if k not in ("list_recipes", "quiet"))
        if others:
            raise UserError(f"--list-recipes only prints the table; drop --{others[0].replace('_', '-')}")
        print(recipe_table())
        return
    cfg = config_from_args(args)
    setup_logging(cfg.quiet)  # --config may set it
    train(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    try:  # every registered method's options become flags: a plugin's may not fit
        with flags_named(flag_for):
            parser, flags = build_parser(), _flags()
    except UserError as e:
        print(error_line("train", e), file=sys.stderr)
        return 2
    return run("train", _body, parser, argv, flags=flags)
