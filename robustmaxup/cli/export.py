"""``robustmaxup export``: write a checkpoint other tools load.

Example::

    robustmaxup export runs/c10/best.pt --format cohen --out c10_cohen.pth.tar
    robustmaxup export runs/c10/best.pt --format state_dict --out c10_weights.pt

``cohen``: ``{"arch", "state_dict", "epoch"}`` with the keys of locuslab/smoothing's
``Sequential(NormalizeLayer, net)`` (``1.`` prefix; ``1.module.`` for its DataParallel-wrapped
ImageNet ResNet-50), so its ``certify.py`` loads it with ``load_state_dict``. ``state_dict``: the
plain ``state_dict`` of our model (normalisation buffers included), for ``torch.load`` +
``load_state_dict`` into :func:`robustmaxup.models.build_model`'s model.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from robustmaxup.cli.args import make_parser
from robustmaxup.cli.common import run


def build_parser() -> argparse.ArgumentParser:
    from robustmaxup.checkpoints import EXPORT_FORMATS

    p = make_parser("export", "Write a checkpoint in a format other tools load.")
    p.add_argument("checkpoint", help="robustmaxup or Cohen-format checkpoint (.pt/.pth.tar)")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS.names(), help="output format")
    p.add_argument("--out", required=True, help="output file (must not exist)")
    p.add_argument("--quiet", action="store_true", help="no info logging")
    return p


def _body(args: argparse.Namespace) -> None:
    from robustmaxup.checkpoints import export_checkpoint

    export_checkpoint(args.checkpoint, args.out, args.format)


def main(argv: Sequence[str] | None = None) -> int:
    return run("export", _body, build_parser(), argv)
