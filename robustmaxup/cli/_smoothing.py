"""Flags shared by ``robustmaxup certify`` and ``predict``, and their mapping to a
:class:`~robustmaxup.certify.runner.SmoothingJob`; the work is done by
:func:`robustmaxup.certify.runner.run_job`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from robustmaxup.certify.runner import SequentialSettings, SmoothingJob, run_job
from robustmaxup.certify.smooth import FUTILITY_RULES, PRECISIONS
from robustmaxup.cli._cohen import cohen_positional_error
from robustmaxup.cli.args import add_class_order_arg, add_data_args, add_runtime_args
from robustmaxup.cli.common import run
from robustmaxup.errors import UserError
from robustmaxup.runtime.text import safe_text

#: samples of the estimation phase of CERTIFY and of PREDICT unless --n says otherwise
N_DEFAULT = SmoothingJob.n

#: library field -> flag, where the flag is not ``--field-name``
FLAGS = {"batch_size": "--batch", "max_images": "--max", "indices": "--skip/--max"}


def add_smoothing_args(p: argparse.ArgumentParser, *, with_n0: bool) -> None:
    p.add_argument("checkpoint", help="robustmaxup or Cohen-format checkpoint (.pt/.pth.tar)")
    add_data_args(p)
    p.add_argument("--sigma", type=float, default=None,
                   help="noise level in [0,1] pixel units (default: the checkpoint's training sigma)")
    if with_n0:
        p.add_argument("--n0", "--N0", dest="n0", type=int, default=100,
                       help="samples to select the top class (--N0 as in Cohen et al.'s certify.py)")
    bound = "at most 10^9, like --n0 and --n-max" if with_n0 else "at most 10^9"
    script = "certify.py" if with_n0 else "predict.py"
    p.add_argument("--n", "--N", dest="n", type=int, default=None,
                   help=f"samples to estimate/test the top class (default: {N_DEFAULT}; --N as in "
                        f"Cohen et al.'s {script}; {bound})")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    p.add_argument("--skip", type=int, default=1, help="use dataset indices 0, skip, 2*skip, ...")
    p.add_argument("--max", type=int, default=-1,
                   help="at most this many images, spread evenly over the skip-selection (default: "
                        "-1, all); it counts images, unlike certify.py's --max, an index bound")
    p.add_argument("--out", default=None,
                   help="output TSV (default: <command>_<checkpoint>_<split>_sigma<S>[_sequential].tsv "
                        "in the current directory; never the checkpoint or the data root)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted output file from its last complete row")
    p.add_argument("--images-per-batch", type=int, default=1,
                   help="images whose noise shares one forward pass (same results for any value)")
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold each Conv-BatchNorm pair into one convolution (faster; same function "
                        "up to rounding)")
    add_class_order_arg(p)
    add_runtime_args(p)


#: the sequential-only flags, dest -> flag; their parser default is None, meaning "not given"
SEQUENTIAL_FLAGS = {"radii": "--radii", "n_max": "--n-max", "radius_tol": "--radius-tol",
                    "sequence": "--sequence", "futility": "--futility"}


def add_sequential_args(p: argparse.ArgumentParser, *, certify: bool = True) -> None:
    """``--sequential`` and its flags: for ``predict`` (``certify=False``) only ``--n-max``."""
    d = SequentialSettings()
    radii = " ".join(f"{r:g}" for r in d.radii or ())
    g = p.add_argument_group("sequential mode (anytime-valid; stops once decided; the flags below "
                             "need --sequential)")
    decided = "every target radius is decided" if certify else "its class is decided"
    g.add_argument("--sequential", action="store_true",
                   help=f"stop sampling an image once {decided} (replaces --n)")
    g.add_argument("--n-max", type=int, default=None,
                   help=f"most {'estimation ' if certify else ''}samples per image (default: {d.n_max})")
    give_up = "stop trying for a radius" if certify else "stop sampling an image (it abstains)"
    g.add_argument("--futility", default=None, choices=FUTILITY_RULES,
                   help=f"{give_up} once even projected (or unanimous) further votes could not "
                        f"decide it by --n-max (default: {d.futility})")
    if not certify:
        return
    g.add_argument("--radii", type=float, nargs="*", default=None,
                   help=f"target radii (default: {radii}); with none given (--radii alone), stop "
                        "when the radius is known to --radius-tol")
    g.add_argument("--radius-tol", type=float, default=None,
                   help=f"stop when the radius is known to this precision, with --radii empty "
                        f"(default: {d.radius_tol:g})")
    g.add_argument("--sequence", default=None, help="anytime-valid confidence sequence "
                   f"(robustmaxup.certify.bounds.CONFIDENCE_SEQUENCES; default: {d.sequence})")


def _sequential_settings(args: argparse.Namespace) -> SequentialSettings | None:
    """The sequential settings, or None without ``--sequential``; a UserError for a flag that
    would otherwise be silently ignored (a sequential flag without it, ``--n`` with it)."""
    given = {d: getattr(args, d) for d in SEQUENTIAL_FLAGS if getattr(args, d, None) is not None}
    if not getattr(args, "sequential", False):
        if given:
            flag = SEQUENTIAL_FLAGS[next(iter(given))]
            raise UserError(f"{flag} applies only with --sequential; add --sequential or drop it")
        return None
    if "radii" in given:
        given["radii"] = tuple(given["radii"]) or None      # --radii alone: to --radius-tol
    if "radius_tol" in given and given.get("radii", ()) is not None:
        raise UserError("--radius-tol applies when the radius itself is the target: pass --radii "
                        "with no values (target radii are decided, not measured)")
    if args.n is not None:
        raise UserError("--n is not used with --sequential (each image takes as many samples as "
                        "it needs); bound them with --n-max instead")
    return SequentialSettings(**given)


def _check_out_text(out: str | None) -> None:
    if out is not None and not out.strip():
        raise UserError("--out is empty; give a file name, or leave --out out for the default name")


def job_from_args(command: str, args: argparse.Namespace) -> SmoothingJob:
    sequential = _sequential_settings(args)
    _check_out_text(args.out)
    return SmoothingJob(
        command=command, checkpoint=args.checkpoint, dataset=args.dataset, data_root=args.data_root,
        cache_dir=args.cache_dir, split=args.split, sigma=args.sigma,
        n0=getattr(args, "n0", None), n=N_DEFAULT if args.n is None else args.n, alpha=args.alpha, batch_size=args.batch,
        skip=args.skip, max_images=args.max, out=args.out, resume=args.resume,
        images_per_batch=args.images_per_batch, precision=args.precision, compile=args.compile,
        fold_bn=args.fold_bn, class_order=args.class_order,
        device=args.device, seed=args.seed, quiet=args.quiet, sequential=sequential,
    )


def run_smoothing(command: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """``main`` of ``certify`` and ``predict``: Cohen et al.'s positional form gets its one line
    (:func:`cohen_positional_error`), anything else goes to :func:`run_job`."""
    cohen = cohen_positional_error(command, sys.argv[2:] if argv is None else argv)
    if cohen:
        print(safe_text(cohen), file=sys.stderr)
        return 2
    return run(command, lambda args: run_job(job_from_args(command, args)), parser, argv, FLAGS)
