"""Standard training (empirical risk minimisation): cross-entropy on clean inputs.

The no-robustness baseline; validated by clean accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from robustmaxup.methods import register_method
from robustmaxup.methods.base import Method


@register_method
@dataclass
class Standard(Method):
    name: ClassVar[str] = "standard"
