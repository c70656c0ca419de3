"""What the readers share."""

from __future__ import annotations

from pathlib import Path

from robustmaxup.data.spec import DatasetSpec
from robustmaxup.errors import UserError, ref


def need_root(root: Path | None, spec: DatasetSpec, hint: str) -> Path:
    """``root``, or a UserError saying what ``spec``'s data root must hold (``hint``)."""
    if root is None:
        raise UserError(f"{spec.name} needs a data root ({ref('data_root')}): {hint}; nothing is "
                        f"downloaded")
    return root
