"""What every subcommand shares: one-line errors (exit 2), logging set-up, common flags.

Every user-caused failure ends in ONE stderr line and exit status 2: a UserError (its
FieldError shown under the flag's name), and, as a safety net, a file-system error
(``OSError``) or an allocation failure (``MemoryError``). Text reaching the terminal has its
control characters escaped (:func:`robustmaxup.runtime.text.safe_text`): the error line here,
every log record once :func:`setup_logging` ran.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Mapping, NoReturn, Sequence

from robustmaxup.errors import UserError, flags_named
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.interrupts import Terminated, sigterm_interrupts
from robustmaxup.runtime.text import install_safe_log_records, safe_text

log = logging.getLogger("robustmaxup")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {safe_text(message)} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where it says something: not for required flags, switches
    (default False), unset values (None), or a help text that states its own default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action)


def make_parser(command: str, description: str) -> ArgumentParser:
    return ArgumentParser(prog=f"robustmaxup {command}", description=description,
                          formatter_class=HelpFormatter)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (a command run in-process, as in tests
    or notebooks, leaves no handler bound to a stream since closed or replaced)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; sys.stderr always wins
        pass


def setup_logging(quiet: bool = False) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler], force=True)
    install_safe_log_records()  # control characters in any log line are escaped


def flag_for(field: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag of a library field: ``flags[field]`` or ``--field-name``."""
    if flags and field in flags:
        return flags[field]
    return "--" + field.replace("_", "-")


def error_line(command: str, error: UserError, flags: Mapping[str, str] | None = None) -> str:
    """The one stderr line for ``error``; a :class:`FieldError` is shown with its flag's name."""
    text = error.renamed(flag_for(error.field, flags)) if isinstance(error, FieldError) else str(error)
    text = safe_text(text.strip())  # one line: newlines and control characters escaped
    return f"robustmaxup {command}: error: {text}"


def run(command: str, body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None, flags: Mapping[str, str] | None = None) -> int:
    """Parse ``argv`` and run ``body(args)``; a UserError becomes one line and exit 2.

    ``flags`` maps library field names to this command's flags where they differ from
    ``--field-name`` (``{"batch_size": "--batch"}``), for FieldErrors and :func:`~robustmaxup.errors.ref`.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed in one line
        return int(e.code or 0)
    setup_logging(getattr(args, "quiet", False))
    try:
        with sigterm_interrupts(), flags_named(lambda field: flag_for(field, flags)):
            body(args)
    except UserError as e:
        print(error_line(command, e, flags), file=sys.stderr)
        return 2
    except MemoryError:
        print(error_line(command, UserError("out of memory; lower the batch size or the number of "
                                            "samples")), file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (disk full, permissions, ...): still one line
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(error_line(command, UserError(f"{e.strerror or e}{where}")), file=sys.stderr)
        return 2
    except Terminated:
        print(f"robustmaxup {command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"robustmaxup {command}: interrupted", file=sys.stderr)
        return 130
    return 0


def add_data_args(p: argparse.ArgumentParser, *, split: str = "test") -> None:
    p.add_argument("--dataset", required=True, help="dataset name (digits, cifar10, cifar100, imagenet)")
    p.add_argument("--data-root", default=None,
                   help="local dataset location (folder or .tar.gz); digits is built in and takes none")
    p.add_argument("--cache-dir", default=None, help="where decoded archives are cached")
    p.add_argument("--split", default=split, choices=["train", "test"], help="which split")


def class_names(value: str) -> tuple[str, ...]:
    """``--class-order``: a file with one class name per line, or names separated by commas."""
    if "," not in value and (os.sep in value or value.endswith(".txt")) and not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"no file {value!r} (give a file, one name per line, or names with commas)")
    try:
        text = Path(value).read_text(encoding="utf-8") if os.path.isfile(value) else value.replace(",", "\n")
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {value!r}: {e}") from None
    if not (names := tuple(n.strip() for n in text.splitlines() if n.strip())):
        raise argparse.ArgumentTypeError(f"no class names in {value!r}")
    return names


def add_class_order_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class-order", type=class_names, default=None, metavar="NAMES|FILE",
                   help="the model's output classes in order (comma-separated names, or a file with one "
                        "per line), matched by name to the data's classes (default: the checkpoint's "
                        "recorded classes; files without them are assumed to be in the data's order)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logging")
