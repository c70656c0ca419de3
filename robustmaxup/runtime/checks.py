"""Value checks whose errors name the *field*, not a command-line flag.

Library code checks its arguments with these functions; a failure raises :class:`FieldError`,
a :class:`~robustmaxup.errors.UserError` that knows which field was wrong. The command line maps
a field to its flag (``batch_size`` -> ``--batch``) when it prints the one-line error, so a
Python user reads ``n0 must be >= 1`` and a CLI user reads ``--n0 must be >= 1``. Other fields a
message names are written with :func:`~robustmaxup.errors.ref` (the same mapping).

Example::

    check_int("n0", 0, minimum=1)        # FieldError: n0 must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any, Iterable

from robustmaxup.errors import UserError, did_you_mean, ref


class FieldError(UserError):
    """A bad value of one named field: ``str(e)`` is ``"<field> <problem>"``."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (e.g. across processes) with both parts
        return type(self), (self.field, self.problem)

    def renamed(self, name: str) -> str:
        """The message with the field shown as ``name`` (e.g. its command-line flag)."""
        return f"{name} {self.problem}"


def _is_number(value: Any) -> bool:
    """A real number: Python's or numpy's ints and floats; not a bool, a string or a tensor."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A finite real number; an integer of any size is (``math.isfinite(10**400)`` overflows)."""
    return _is_number(value) and (isinstance(value, numbers.Integral) or math.isfinite(value))


def check_range(field: str, value: float, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` if it is a finite number in the interval, else FieldError."""
    if not _is_finite(value):
        raise FieldError(field, f"must be a finite number, got {value!r}")
    if (lo is not None and (value < lo or (lo_open and value == lo))) or \
       (hi is not None and (value > hi or (hi_open and value == hi))):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise FieldError(field, f"must lie in {left}{'-inf' if lo is None else lo}, "
                                f"{'inf' if hi is None else hi}{right}, got {value}")
    return value


def check_positive(field: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` if it is a finite number > 0 (``>= 0`` with ``allow_zero``), else FieldError."""
    if not _is_finite(value) or value < 0 or (value == 0 and not allow_zero):
        got = value if _is_number(value) else repr(value)  # a string shows its quotes
        raise FieldError(field, f"must be {'>= 0' if allow_zero else '> 0'} and finite, got {got}")
    return value


def check_int(field: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int if it is an integer (Python's or numpy's) within bounds, else
    FieldError. A float is refused even when whole (``1e5``): counts are never silently rounded,
    and a float reaching ``range`` or a shape would fail later with a traceback."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)) and \
            math.isfinite(value) and value == int(value):
        raise FieldError(field, f"must be an integer, got the float {value!r}; write {int(value)}")
    if not (_is_finite(value) and isinstance(value, numbers.Integral)):
        raise FieldError(field, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise FieldError(field, f"must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise FieldError(field, f"must be an integer <= {maximum}, got {value}")
    return int(value)


def check_class_indices(field: str, labels: Any, num_classes: int) -> None:
    """FieldError unless every entry of ``labels`` (a tensor or array) is in ``[0, num_classes)``."""
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise FieldError(field, f"must be class indices in [0, {num_classes})")


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else FieldError listing them."""
    options = list(choices)
    if value not in options:
        raise FieldError(field, f"must be one of {', '.join(map(str, options))}, got {value!r}"
                                f"{did_you_mean(value, options)}")
    return value


def check_alpha(alpha: float, field: str = "alpha") -> float:
    """A failure probability in (0, 1), else FieldError (with an example value)."""
    if not (_is_finite(alpha) and 0 < alpha < 1):
        raise FieldError(field, f"must be a failure probability in (0, 1), got {alpha!r}; e.g. "
                                f"{ref(field, 0.001)}")
    return alpha


def parse_fraction(text: str, field: str = "value") -> float:
    """Parse ``"8/255"``, ``"0.5"`` or ``"1e-3"`` to a finite float; FieldError otherwise."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise FieldError(field, f"cannot be read as a number: {text!r} (examples: 0.5, 8/255)") from None
    if not math.isfinite(value):
        raise FieldError(field, f"must be finite, got {text!r}")
    return value


def check_pixels(x: Any, what: str = "x") -> None:
    """UserError unless every entry of the tensor ``x`` is a pixel value in [0, 1] (NaN is not):
    noise and perturbations live in pixel space, normalisation inside the model. One host sync."""
    if not x.numel():
        return
    lo, hi = x.min().item(), x.max().item()
    if lo < 0.0 or hi > 1.0 or lo != lo or hi != hi:
        raise UserError(f"{what} must lie in [0, 1] (pixels, normalisation inside the model); "
                        f"got values in [{lo:.4g}, {hi:.4g}]")
