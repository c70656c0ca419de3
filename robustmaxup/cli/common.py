"""How every subcommand runs: one-line errors (exit 2) and logging set-up (its parser and
common flags: :mod:`robustmaxup.cli.args`).

Every user-caused failure ends in ONE stderr line and exit status 2: a UserError (its
FieldError shown under the flag's name), and, as a safety net, a file-system error
(``OSError``) or an allocation failure (``MemoryError``). Text reaching the terminal has its
control characters escaped (:func:`robustmaxup.runtime.text.safe_text`): the error line here,
every log record once :func:`setup_logging` ran.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Mapping, Sequence

from robustmaxup.errors import UserError, flags_named
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.dist import Dist
from robustmaxup.runtime.interrupts import Terminated, sigterm_interrupts
from robustmaxup.runtime.text import install_safe_log_records, safe_text

log = logging.getLogger("robustmaxup")


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
    Under torchrun a rank other than 0 names itself, and stays silent while its error can only
    repeat rank 0's (:attr:`~robustmaxup.runtime.dist.Dist.owns_its_errors`).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed in one line
        return int(e.code or 0)
    setup_logging(getattr(args, "quiet", False))
    here = Dist.from_env()
    name = command if here.main else f"{command} (rank {here.rank})"

    def report(line: str, code: int) -> int:
        if here.owns_its_errors:
            print(line, file=sys.stderr)
        return code

    try:
        with sigterm_interrupts(), flags_named(lambda field: flag_for(field, flags)):
            body(args)
    except UserError as e:
        return report(error_line(name, e, flags), 2)
    except MemoryError:
        return report(error_line(name, UserError("out of memory; lower the batch size or the number of samples")), 2)
    except OSError as e:  # the file system refused (disk full, permissions, ...): still one line
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return report(error_line(name, UserError(f"{e.strerror or e}{where}")), 2)
    except Terminated:
        return report(f"robustmaxup {name}: terminated (SIGTERM)", 143)
    except KeyboardInterrupt:
        return report(f"robustmaxup {name}: interrupted", 130)
    return 0
