"""Named seed streams: every random draw of a run comes from ``stream_seed(seed, name, *parts)``.

A bare ``derive_seed(seed, 4)`` says nothing about what it seeds, and two mechanisms that both
pick small integers collide (the training subset and epoch 4's order once shared a seed). Each
consumer names its stream instead; the name is part of the hash, so streams never collide, and
:data:`STREAMS` documents every one of them.

Example::

    g = make_generator(stream_seed(0, "certify.noise", 1234), "cpu")   # image 1234's noise
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from robustmaxup.runtime.checks import check_int

#: stream name -> what it seeds (the only names :func:`stream_seed` accepts)
STREAMS: dict[str, str] = {
    "train.init": "global RNGs at the start of training (model initialisation)",
    "train.noise": "per-rank generator of the training method (noise, attacks, mixing); parts: rank",
    "train.subset": "the --max-train random subset of the training split",
    "train.val_split": "which training images are held out for validation",
    "data.order": "the epoch's example order; parts: epoch",
    "data.augment": "the epoch's crop/flip draws; parts: epoch, rank",
    "eval.val": "noise/attacks of the per-epoch validation metric",
    "eval.test": "noise/attacks of the per-epoch test metric",
    "certify.noise": "one image's smoothing noise (certify, predict); parts: dataset index",
    "attack.example": "one example's PGD start and the smoothing noise it sees in PGD; parts: dataset index",
    "attack.rescore": "re-scoring noise of one example's x_adv; parts: dataset index",
    "attack.batch": "per-call randomness of AutoAttack (its seed; smoothing noise); parts: first index, use",
    "bench": "benchmarks and experiments",
}


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed derived deterministically from integers and strings."""
    h = hashlib.sha256(",".join(str(p) if isinstance(p, str) else str(int(p)) for p in parts).encode())
    return int.from_bytes(h.digest()[:8], "little") & (2**63 - 1)


def check_seed(seed: int) -> int:
    """``seed`` as an int if it is an integer in torch's seed range, else FieldError naming ``seed``."""
    return check_int("seed", seed, minimum=-2**63, maximum=2**64 - 1)


def stream_seed(seed: int, stream: str, *parts: int) -> int:
    """The seed of stream ``stream`` (a key of :data:`STREAMS`) of run seed ``seed``, refined by
    integer ``parts`` (an image index, an epoch, a rank)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown seed stream {stream!r}; add it to runtime.seeds.STREAMS")
    return derive_seed(int(seed), stream, *(int(p) for p in parts))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) % 2**63)
    return g


def stream_generator(seed: int, stream: str, *parts: int,
                     device: torch.device | str = "cpu") -> torch.Generator:
    """``make_generator(stream_seed(seed, stream, *parts), device)``."""
    return make_generator(stream_seed(seed, stream, *parts), device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
