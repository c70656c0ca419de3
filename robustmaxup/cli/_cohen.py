"""The one error line for Cohen et al.'s positional ``certify.py``/``predict.py`` form."""

from __future__ import annotations

import shlex
from typing import Sequence

from robustmaxup.data import DATASETS


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv``'s plain arguments and its options, as Cohen et al.'s parser reads them: every
    option of their ``certify.py``/``predict.py`` takes a value (``--skip 20``, ``--skip=20``),
    and options may come anywhere."""
    plain: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and not _is_number(a):
            takes_next = "=" not in a and i + 1 < len(argv)
            options.extend(argv[i:i + 2] if takes_next else [a])
            i += 2 if takes_next else 1
        else:
            plain.append(a)
            i += 1
    return plain, options


def cohen_positional_error(command: str, argv: Sequence[str]) -> str | None:
    """The one error line for Cohen et al.'s positional form (``certify.py DATASET CHECKPOINT
    SIGMA OUTFILE [options]``, options anywhere), spelling out the same run in robustmaxup's
    flags; None otherwise."""
    if "--dataset" in argv or any(a.startswith("--dataset=") for a in argv):
        return None
    plain, options = _split(argv)
    if len(plain) != 4:
        return None
    dataset, checkpoint, sigma, outfile = plain
    if dataset not in DATASETS.names() or not _is_number(sigma):
        return None
    root = "" if DATASETS.get(dataset).bundled else " --data-root DIR"
    rest = " ".join(shlex.quote(a) for a in options)
    same = (f"robustmaxup {command} {shlex.quote(checkpoint)} --dataset {dataset}{root} "
            f"--sigma {sigma} --out {shlex.quote(outfile)}" + (f" {rest}" if rest else ""))
    return (f"robustmaxup {command}: error: this is Cohen et al.'s positional form "
            f"({command}.py DATASET CHECKPOINT SIGMA OUTFILE); in robustmaxup the same run is: {same}")
