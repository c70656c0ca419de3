"""Resource limits: absurd sizes fail fast, with one line, before any allocation or output file.

* Counts with documented caps (:data:`MAX_SAMPLES`, :data:`MAX_RESCORES`, :data:`MAX_STEPS`,
  :data:`MAX_NOISE_DRAWS`): a value beyond them would run for days or forever.
* :func:`check_memory`: a lower bound of the memory a batch needs, against what the device
  has free (``torch.cuda.mem_get_info`` on CUDA; ``MemAvailable`` and the cgroup limit on the
  CPU). The bound is deliberately low (the buffer the work allocates plus a modest allowance
  for activations), so only sizes that cannot possibly fit are refused.

Example::

    check_memory("batch_size", batch_bytes(1000, (3, 32, 32)), "cpu")   # passes
    check_memory("batch_size", batch_bytes(10**12, (3, 32, 32)), "cpu")
    # FieldError: batch_size needs at least 12288 GB on cpu (...), but 31.2 GB is free; lower it
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

from robustmaxup.runtime.checks import FieldError

#: most noise samples per image in one certify/predict phase (``n``, ``n0``, ``n_max``): 10^9
#: forward passes of one image is days of GPU time for CIFAR-10 networks
MAX_SAMPLES = 10**9
#: most re-scorings of an adversarial example (each is a full smoothed forward)
MAX_RESCORES = 1000
#: most PGD iterations
MAX_STEPS = 100_000
#: most noise draws per forward of a smoothed model (``--copies``)
MAX_NOISE_DRAWS = 100_000
#: the allowance for activations, as a multiple of a batch's input bytes (a lower bound: real
#: networks use more, so only a batch that cannot fit is refused)
ACTIVATION_FACTOR = 4


def batch_bytes(samples: int, shape: Sequence[int], *, bytes_per_value: int = 4,
                factor: float = 1 + ACTIVATION_FACTOR) -> int:
    """A lower bound of the memory ``samples`` inputs of ``shape`` take through a network."""
    values = math.prod(int(s) for s in shape)
    return int(samples * values * bytes_per_value * factor)


def _cgroup_free() -> int | None:
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max":
                return None
            cap, used = int(text), int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap < 1 << 60:
            return max(cap - used, 0)
    return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free on ``device`` now (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    group = _cgroup_free()
    return free if group is None else min(free, group)


def _gb(n: float) -> str:
    return f"{n / 2**30:.3g} GB"


def check_memory(field: str, need: int, device: torch.device | str, *, what: str = "") -> None:
    """FieldError naming ``field`` if ``need`` bytes (a lower bound) exceed the free memory of
    ``device``; nothing is allocated."""
    free = available_memory(device)
    if free is not None and need > free:
        detail = f" ({what})" if what else ""
        raise FieldError(field, f"needs at least {_gb(need)} on {torch.device(device)}{detail}, but "
                                f"only {_gb(free)} is free; lower it")
