"""A quick look at a freshly loaded model: its clean accuracy on a few images, with a warning
when it is near chance (a wrong normalisation, dataset or label mapping shows here at once).

The caller picks the images (this room does not import ``data``); spread them over the
selection, since the first ones may all be one class on class-sorted splits::

    from robustmaxup.data import spread_indices
    chosen = [indices[i] for i in spread_indices(len(indices), CLEAN_CHECK_IMAGES).tolist()]
    accuracy, images = clean_accuracy(model, split, chosen, batch=256, device=device)
    log_clean_accuracy(accuracy, images, split.info.num_classes, "the model")
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from robustmaxup.errors import UserError, ref
from robustmaxup.runtime.text import error_summary

log = logging.getLogger(__name__)

#: how many images the clean-accuracy check looks at
CLEAN_CHECK_IMAGES = 100


def clean_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], split: Any, indices: Sequence[int],
                   batch: int, device: torch.device) -> tuple[float, int]:
    """Accuracy of ``forward`` (logits) on the images ``indices`` of ``split`` (anything with
    ``.batch(indices) -> (x, y)`` and ``.info.name``): ``(accuracy, images)``.
    A model that does not accept the images is a UserError."""
    chosen = [int(i) for i in indices]
    if not chosen:
        raise ValueError("no images to check")
    correct = 0
    with torch.no_grad():
        for start in range(0, len(chosen), batch):
            xs, ys = split.batch(chosen[start:start + batch])
            try:
                pred = forward(xs.to(device)).argmax(1).cpu()
            except RuntimeError as e:
                raise UserError(f"the model does not accept {split.info.name} images of shape "
                                f"{tuple(xs.shape[1:])}: {error_summary(e, 200)}; check "
                                f"{ref('dataset')} and the checkpoint") from None
            correct += int((pred == ys).sum())
    return correct / len(chosen), len(chosen)


def class_order_hint(source: str | None) -> str:
    """Where the model's class order came from (``checkpoints.map_classes``) -> what to check."""
    return {
        "declared": f"the class order given with {ref('class_order')}",
        "checkpoint": "the class order the checkpoint records",
        "assumed": f"the class order (assumed to be the data's; give the model's with {ref('class_order')})",
    }.get(source or "", "the labels")


def log_clean_accuracy(accuracy: float, images: int, num_classes: int, what: str,
                       class_source: str | None = None) -> None:
    """Log the clean accuracy right after loading, warning when it is near chance (a wrong
    normalisation, dataset or label mapping shows here at once); ``class_source`` (``"declared"``,
    ``"checkpoint"`` or ``"assumed"``) names the class order to suspect."""
    log.info("check after loading: clean accuracy of %s on %d images spread over the selection: "
             "%.1f%%", what, images, 100 * accuracy)
    if accuracy < 2.0 / num_classes and images >= 20:
        log.warning("warning: clean accuracy is near chance; if the model is trained, check %s, "
                    "the normalisation and %s", ref("dataset"), class_order_hint(class_source))
