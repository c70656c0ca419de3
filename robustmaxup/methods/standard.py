"""Standard training (empirical risk minimisation): cross-entropy on clean inputs.

The no-robustness baseline; validated by clean accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from robustmaxup.methods.base import Method
from robustmaxup.methods.registry import register_method


@register_method
@dataclass
class Standard(Method):
    """Plain cross-entropy on the clean batch (the base :class:`Method`)."""

    name: ClassVar[str] = "standard"
