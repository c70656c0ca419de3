"""The one error line for Cohen et al.'s positional ``certify.py``/``predict.py`` form."""

from __future__ import annotations

import shlex
from typing import Sequence

from robustmaxup.data import DATASETS


def cohen_positional_error(command: str, argv: Sequence[str]) -> str | None:
    """The one error line for Cohen et al.'s positional form (``certify.py DATASET CHECKPOINT
    SIGMA OUTFILE [options]``), spelling out the same run in robustmaxup's flags; None otherwise."""
    head = list(argv[:4])
    if len(head) < 4 or any(a.startswith("-") for a in head) or "--dataset" in argv:
        return None
    dataset, checkpoint, sigma, outfile = head
    try:
        float(sigma)
    except ValueError:
        return None
    if dataset not in DATASETS.names():
        return None
    rest = " ".join(shlex.quote(a) for a in argv[4:])
    same = (f"robustmaxup {command} {shlex.quote(checkpoint)} --dataset {dataset} --data-root DIR "
            f"--sigma {sigma} --out {shlex.quote(outfile)}" + (f" {rest}" if rest else ""))
    return (f"robustmaxup {command}: error: this is Cohen et al.'s positional form "
            f"({command}.py DATASET CHECKPOINT SIGMA OUTFILE); in robustmaxup the same run is: {same}")
