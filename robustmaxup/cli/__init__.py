"""The ``robustmaxup`` command line: one module per subcommand, each with ``build_parser()`` and
``main(argv) -> int``. Subcommand modules are imported lazily, so ``--help`` is instant and
nothing runs at import time."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

from robustmaxup.cli.plugins import load_plugins
from robustmaxup.errors import UserError, did_you_mean
from robustmaxup.runtime.text import safe_text

SUBCOMMANDS: dict[str, str] = {
    "train": "train a classifier (Gaussian, MaxUp and the baselines)",
    "certify": "certify L2 radii of a smoothed classifier (Cohen et al. CERTIFY)",
    "predict": "predict with a smoothed classifier (Cohen et al. PREDICT)",
    "analyze": "certified-accuracy tables and plots from certify TSV files",
    "attack": "empirical robust accuracy with PGD or AutoAttack",
    "export": "write a checkpoint in a format other tools load (Cohen et al.'s, plain state_dict)",
}


def _usage() -> str:
    lines = ["usage: robustmaxup <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "Run 'robustmaxup <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe would print a traceback
        return code
    except BrokenPipeError:  # `robustmaxup ... --help | head`: the reader left; no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m robustmaxup -- train ...`: the -- keeps torchrun off our flags
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)   # asked for, or a usage error
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from robustmaxup import __version__

        print(f"robustmaxup {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        load_plugins()
    except UserError as e:
        print(f"robustmaxup: error: {safe_text(str(e))}", file=sys.stderr)
        return 2
    if command not in SUBCOMMANDS:
        print(f"robustmaxup: error: unknown command {command!r}; choose from {', '.join(SUBCOMMANDS)}"
              f"{did_you_mean(command, SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"robustmaxup.cli.{command}")
    return module.main(rest)
