"""On-device training augmentation of device-resident data: random crop of the padded image and
horizontal flip, vectorised over the batch (one gather, no per-image loop, no padded copy).

The padding is zeros (torchvision's ``RandomCrop(32, padding=4)``, used by most references),
``reflect`` (numpy's ``mode='reflect'``: the row or column next to the border, mirrored without
repeating the edge; Rice et al.'s and AWP's ``utils.py:27``) or ``grey`` (mid-grey 128 of 255,
``RandomCrop(..., fill=128)`` of the AMP reference, ``data_utils.py:39``).

Which policy a dataset trains with is part of its :class:`~robustmaxup.data.spec.DatasetSpec`
(``spec.augment``); ``TrainConfig.crop_padding`` picks the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CropFlip", "PADDINGS", "crop_flip"]

#: padding modes of the random crop
PADDINGS = ("zeros", "reflect", "grey")


def _source(offset: torch.Tensor, size: int, pad: int, padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices in the unpadded image of the positions ``offset [B, n]`` of the padded one,
    and whether each lies inside the image (what a constant padding fills; ``reflect`` maps every
    position to a pixel of the image)."""
    q = offset - pad
    inside = (q >= 0) & (q < size)
    if padding == "reflect":
        q = q.abs()
        return torch.where(q > size - 1, 2 * (size - 1) - q, q), inside
    return q.clamp(0, size - 1), inside


def crop_flip(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor,
              flipped: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Crop each image from its padded version at offset ``(dy, dx)``, then mirror it left-right
    where ``flipped``; one gather, no per-image loop.

    Args:
        x: ``[B, C, H, W]``, any dtype (uint8 in the loaders).
        pad: padding on every side (smaller than H and W).
        dy, dx: int64 ``[B]`` in ``0..2*pad``; ``(pad, pad)`` leaves the image in place.
        flipped: bool ``[B]``.
        padding: one of :data:`PADDINGS` (``grey``: 128 for uint8 images, 128/255 otherwise).

    Returns:
        ``[B, C, H, W]``, same dtype and device: ``out[b] = flip?(padded[b, :, dy:dy+H, dx:dx+W])``.

    Example::

        out = crop_flip(x, 4, torch.full((B,), 4), torch.full((B,), 4), torch.zeros(B, dtype=bool))
        assert torch.equal(out, x)
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    b, c, h, w = x.shape
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows, rows_in = _source(dy.view(b, 1) + ar_h, h, pad, padding)  # [B, H]
    cols, cols_in = _source(dx.view(b, 1) + torch.where(flipped.view(b, 1), w - 1 - ar_w, ar_w), w, pad,
                            padding)  # [B, W]
    flat = (rows.view(b, h, 1) * w + cols.view(b, 1, w)).view(b, 1, h * w)
    out = x.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    if padding == "reflect":
        return out
    inside = rows_in.view(b, 1, h, 1) & cols_in.view(b, 1, 1, w)
    fill = 0 if padding == "zeros" else (128 if x.dtype == torch.uint8 else 128 / 255)
    return torch.where(inside, out, torch.full((), fill, dtype=x.dtype, device=x.device))


@dataclass(frozen=True)
class CropFlip:
    """Random crop with ``pad`` pixels of ``padding`` (one of :data:`PADDINGS`), plus a random
    horizontal flip if ``flip``.

    ``policy(x, generator)`` draws per-sample offsets (and flips) from ``generator``, which must
    live on ``x``'s device, and returns the augmented batch (same shape and dtype).
    """

    pad: int
    flip: bool
    padding: str = "zeros"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        shifts = torch.randint(0, 2 * self.pad + 1, (2, b), generator=generator, device=x.device)
        if self.flip:
            flipped = torch.randint(0, 2, (b,), generator=generator, device=x.device).bool()
        else:
            flipped = torch.zeros(b, dtype=torch.bool, device=x.device)
        return crop_flip(x, self.pad, shifts[0], shifts[1], flipped, self.padding)
