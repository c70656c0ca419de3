"""Flags shared by ``robustmaxup certify`` and ``predict``, and their mapping to a
:class:`~robustmaxup.certify.runner.SmoothingJob`; the work is done by
:func:`robustmaxup.certify.runner.run_job`."""

from __future__ import annotations

import argparse

from robustmaxup.certify.runner import SequentialSettings, SmoothingJob
from robustmaxup.certify.smooth import FUTILITY_RULES, PRECISIONS
from robustmaxup.cli.common import add_data_args, add_runtime_args

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
    p.add_argument("--n", "--N", dest="n", type=int, default=100_000,
                   help="samples to estimate/test the top class (--N as in Cohen et al.'s certify.py; "
                        "at most 10^9, like --n0 and --n-max)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    p.add_argument("--skip", type=int, default=1, help="use dataset indices 0, skip, 2*skip, ...")
    p.add_argument("--max", type=int, default=-1,
                   help="at most this many images, spread evenly over the skip-selection (-1: all); "
                        "it counts images, unlike certify.py's --max, an index bound")
    p.add_argument("--out", default=None,
                   help="output TSV (default: <command>_<checkpoint>_<split>_sigma<S>.tsv in the current "
                        "directory; never the checkpoint or the data root)")
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
    add_runtime_args(p)


def add_sequential_args(p: argparse.ArgumentParser) -> None:
    d = SequentialSettings()
    g = p.add_argument_group("sequential certification (anytime-valid; stops once decided)")
    g.add_argument("--sequential", action="store_true",
                   help="stop sampling an image once every target radius is decided (--n is unused)")
    g.add_argument("--radii", type=float, nargs="*", default=list(d.radii),
                   help="target radii; with none given (--radii alone), stop when the radius is "
                        "known to --radius-tol")
    g.add_argument("--n-max", type=int, default=d.n_max, help="most estimation samples per image")
    g.add_argument("--radius-tol", type=float, default=d.radius_tol,
                   help="stop when the radius is known to this precision (with --radii empty)")
    g.add_argument("--sequence", default=d.sequence, help="anytime-valid confidence sequence "
                   "(robustmaxup.certify.bounds.CONFIDENCE_SEQUENCES)")
    g.add_argument("--futility", default=d.futility, choices=FUTILITY_RULES,
                   help="give a radius up when even projected (or unanimous) further votes cannot reach it")


def job_from_args(command: str, args: argparse.Namespace) -> SmoothingJob:
    sequential = None
    if getattr(args, "sequential", False):
        sequential = SequentialSettings(n_max=args.n_max, radii=tuple(args.radii) or None,
                                        radius_tol=args.radius_tol, sequence=args.sequence,
                                        futility=args.futility)
    return SmoothingJob(
        command=command, checkpoint=args.checkpoint, dataset=args.dataset, data_root=args.data_root,
        cache_dir=args.cache_dir, split=args.split, sigma=args.sigma,
        n0=getattr(args, "n0", None), n=args.n, alpha=args.alpha, batch_size=args.batch,
        skip=args.skip, max_images=args.max, out=args.out, resume=args.resume,
        images_per_batch=args.images_per_batch, precision=args.precision, compile=args.compile,
        fold_bn=args.fold_bn,
        device=args.device, seed=args.seed, quiet=args.quiet, sequential=sequential,
    )
