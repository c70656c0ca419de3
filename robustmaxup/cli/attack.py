"""``robustmaxup attack``: empirical robust accuracy with AutoAttack (default) or our PGD.

Example::

    robustmaxup attack runs/c10/best.pt --dataset cifar10 --data-root data/cifar10 \\
        --norm Linf --eps 8/255 --n-examples 1000 --batch 500 --out aa_linf.json
    robustmaxup attack runs/c10/best.pt --dataset cifar10 --data-root data/cifar10 \\
        --norm L2 --eps 0.5 --smoothed --copies 32       # soft smoothed model, version rand (EOT)
    robustmaxup attack ckpt.pt --dataset digits --attack pgd --eps 0.1 --steps 20

This module only parses: the run, its files (JSON, per-example TSV, ``--save-adv`` tensors,
AutoAttack log), chunked ``--resume`` and the seeding are
:func:`robustmaxup.attacks.runner.evaluate_dataset`, documented there.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from robustmaxup.cli.args import add_class_order_arg, add_data_args, add_renamed, add_runtime_args, make_parser
from robustmaxup.cli.common import run
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import check_int, parse_fraction
from robustmaxup.runtime.io import check_not_inputs, file_label

log = logging.getLogger("robustmaxup")
INDEX_RULE = "n evenly spaced examples of the split (data.spread_indices); all when n >= its size"
#: library field -> flag, where they differ from ``--field-name``
FLAGS = {"batch_size": "--batch", "version": "--aa-version"}
RENAMED = {"--version": "--aa-version (--version prints robustmaxup's version)",
           "--m": "--copies (one name for noise copies, as in train)"}



def build_parser() -> argparse.ArgumentParser:
    from robustmaxup.attacks import EVALUATORS
    from robustmaxup.attacks.autoattack import AA_ATTACKS, AA_VERSIONS

    p = make_parser("attack", "Empirical robust accuracy under AutoAttack or PGD; the robust "
                              "accuracy is the pointwise worst case over attacks.")
    p.add_argument("checkpoint", help="robustmaxup or Cohen-format checkpoint")
    add_data_args(p)
    p.add_argument("--attack", default="autoattack",
                   help=f"attack to run: {', '.join(EVALUATORS.names())}")
    p.add_argument("--norm", default="Linf", help="threat model: Linf, L2 (or L1 for AutoAttack)")
    p.add_argument("--eps", required=True, help="budget in [0,1] pixel units; fractions like 8/255 work")
    add_renamed(p, RENAMED)
    p.add_argument("--aa-version", dest="version", default=None,
                   help=f"AutoAttack version: {', '.join(AA_VERSIONS)} (default: standard; rand "
                        "with --smoothed; custom with --attacks)")
    p.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                   help=f"AutoAttack custom attack list from: {', '.join(AA_ATTACKS)}")
    p.add_argument("--steps", type=int, default=None, help="PGD steps (--attack pgd; default 10)")
    p.add_argument("--step-size", default=None,
                   help="PGD step size (--attack pgd; default 2.5*eps/steps; fractions work)")
    p.add_argument("--n-examples", type=int, default=1000,
                   help="evaluate N evenly spaced examples of the split (all if N >= its size)")
    p.add_argument("--batch", type=int, default=500,
                   help="examples per chunk (attack batch and unit of --resume)")
    p.add_argument("--smoothed", action="store_true",
                   help="attack the soft smoothed classifier (mean softmax over --copies noise draws)")
    p.add_argument("--sigma", type=float, default=None,
                   help="smoothing noise level (default: the checkpoint's training sigma)")
    p.add_argument("--copies", type=int, default=32, help="noise draws per forward of the smoothed model")
    p.add_argument("--rescores", type=int, default=None,
                   help="re-scorings of x_adv (default: 5 for --smoothed, else 1)")
    p.add_argument("--out", default=None,
                   help="output JSON (default: attack_<checkpoint>_<attack>_<norm>_eps<EPS>[_smoothed]"
                        ".json); the TSV goes beside it")
    p.add_argument("--save-adv", default=None, metavar="FILE", help="also save x_adv to this torch file")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last finished chunk (a finished run "
                        "is only re-checked: its settings must match)")
    add_class_order_arg(p)
    add_runtime_args(p)
    return p


def attack_config(args: argparse.Namespace, eps: float, sigma: float | None):
    """The :class:`~robustmaxup.attacks.AttackConfig` the flags ask for (not yet validated)."""
    from robustmaxup.attacks import AttackConfig

    if args.attack != "autoattack" and (args.version is not None or args.attacks):
        raise UserError(f"--aa-version/--attacks apply to --attack autoattack, not {args.attack!r}")
    if args.attack == "autoattack" and (args.steps is not None or args.step_size is not None):
        raise UserError("--steps/--step-size apply to --attack pgd; AutoAttack sets its own "
                        "iterations (choose its attacks with --aa-version or --attacks)")
    if (args.sigma is not None or args.copies != 32) and not args.smoothed:
        raise UserError("--sigma/--copies only apply with --smoothed")
    version = args.version or ("custom" if args.attacks else "rand" if args.smoothed else "standard")
    step_size = parse_fraction(args.step_size, "step_size") if args.step_size is not None else None
    return AttackConfig(eps=eps, attack=args.attack, norm=args.norm, version=version,
                        attacks=tuple(args.attacks) if args.attacks else None,
                        steps=AttackConfig.steps if args.steps is None else args.steps, step_size=step_size,
                        batch_size=args.batch, sigma=sigma, copies=args.copies, rescores=args.rescores)


def default_out(args: argparse.Namespace, eps: float) -> Path:
    """``attack_<checkpoint>_<attack>_<norm>_eps<EPS>[_smoothed[_sigma<S>]].json`` in the current
    directory (``<checkpoint>``: :func:`~robustmaxup.runtime.io.file_label`, so two models, or a
    model and its smoothed version, attacked side by side never share a default output)."""
    smoothed = "_smoothed" + ("" if args.sigma is None else f"_sigma{args.sigma:g}") if args.smoothed else ""
    return Path(f"attack_{file_label(args.checkpoint)}_{args.attack}_{args.norm}_eps{eps:.6g}{smoothed}.json")


def _body(args: argparse.Namespace) -> None:
    from robustmaxup.attacks.evaluation import check_config
    from robustmaxup.attacks.runner import AttackPaths, evaluate_dataset
    from robustmaxup.checkpoints import load_model, map_classes, resolve_sigma
    from robustmaxup.data import get_info, load_split, spread_indices
    from robustmaxup.runtime.dist import resolve_device
    from robustmaxup.runtime.records import checkpoint_record

    eps = parse_fraction(args.eps, "eps")
    check_int("n_examples", args.n_examples, minimum=1)
    info = get_info(args.dataset)
    # fail fast, before loading anything: the settings (sigma may still come from the checkpoint)
    early_sigma = args.sigma if args.sigma is not None else (1.0 if args.smoothed else None)
    check_config(attack_config(args, eps, early_sigma), info.image_shape)
    out = Path(args.out) if args.out else default_out(args, eps)
    paths = AttackPaths.for_output(out, args.save_adv)
    check_not_inputs(paths.named(), [("the checkpoint", args.checkpoint), ("the data root (--data-root)", args.data_root)])
    paths.check_fresh(args.resume)
    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, dataset=args.dataset, num_classes=info.num_classes,
                             device=device)
    sigma = resolve_sigma(args.sigma, meta, verb="attacking",
                          missing_hint="pass --sigma with --smoothed")[0] if args.smoothed else None
    config = attack_config(args, eps, sigma)
    split = load_split(args.dataset, args.split, root=args.data_root, cache_dir=args.cache_dir)
    classes = map_classes(model, meta, split.classes, args.class_order)
    if args.n_examples > len(split):
        log.info("the %s split has only %d examples; evaluating all of them", args.split, len(split))
    indices = spread_indices(len(split), args.n_examples).tolist()  # splits may be sorted by class
    extra = {**checkpoint_record(args.checkpoint, meta), **classes, "index_rule": INDEX_RULE,
             "config": {**vars(args), "eps_value": eps}}
    evaluate_dataset(model, split, indices, config, seed=args.seed, out=out, resume=args.resume,
                     save_adv=args.save_adv, progress=not args.quiet, extra_record=extra, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    return run("attack", _body, build_parser(), argv, flags=FLAGS)
