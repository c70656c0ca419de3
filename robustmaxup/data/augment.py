"""On-device training augmentation of device-resident data: random crop (zero padding) and
horizontal flip, vectorised over the batch (one gather, no per-image loop).

Which policy a dataset trains with is part of its :class:`~robustmaxup.data.spec.DatasetSpec`
(``spec.augment``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CropFlip", "crop_flip"]


def crop_flip(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor,
              flipped: torch.Tensor) -> torch.Tensor:
    """Crop each image from its zero-padded version at offset ``(dy, dx)``, then mirror it
    left-right where ``flipped``; one gather, no per-image loop.

    Args:
        x: ``[B, C, H, W]``, any dtype (uint8 in the loaders).
        pad: zero padding on every side.
        dy, dx: int64 ``[B]`` in ``0..2*pad``; ``(pad, pad)`` leaves the image in place.
        flipped: bool ``[B]``.

    Returns:
        ``[B, C, H, W]``, same dtype and device: ``out[b] = flip?(padded[b, :, dy:dy+H, dx:dx+W])``.

    Example::

        out = crop_flip(x, 4, torch.full((B,), 4), torch.full((B,), 4), torch.zeros(B, dtype=bool))
        assert torch.equal(out, x)
    """
    b, c, h, w = x.shape
    wp = w + 2 * pad
    padded = x.new_zeros(b, c, h + 2 * pad, wp)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy.view(b, 1) + ar_h  # [B, H] source rows in the padded image
    cols = dx.view(b, 1) + torch.where(flipped.view(b, 1), w - 1 - ar_w, ar_w)  # [B, W]
    flat = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w)
    return padded.view(b, c, -1).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)


@dataclass(frozen=True)
class CropFlip:
    """Random crop with ``pad`` pixels of zero padding, plus a random horizontal flip if ``flip``.

    ``policy(x, generator)`` draws per-sample offsets (and flips) from ``generator``, which must
    live on ``x``'s device, and returns the augmented batch (same shape and dtype).
    """

    pad: int
    flip: bool

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        shifts = torch.randint(0, 2 * self.pad + 1, (2, b), generator=generator, device=x.device)
        if self.flip:
            flipped = torch.randint(0, 2, (b,), generator=generator, device=x.device).bool()
        else:
            flipped = torch.zeros(b, dtype=torch.bool, device=x.device)
        return crop_flip(x, self.pad, shifts[0], shifts[1], flipped)
