"""What every subcommand's parser shares: one-line usage errors, helpful defaults, common flags.

A usage error is one stderr line and exit status 2, on rank 0 only under torchrun (every rank
parses the same arguments). A flag that was renamed stays known, as an error naming its
replacement (:func:`add_renamed`), so an old command line never silently changes meaning.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping, NoReturn

from robustmaxup.data.registry import DATASETS
from robustmaxup.errors import did_you_mean
from robustmaxup.runtime.dist import Dist
from robustmaxup.runtime.text import safe_text


#: the reference code's spellings of our flags (locuslab/smoothing, smoothing-adversarial,
#: smoothmix): an unknown flag among them is answered with ours, where the command has it
FOREIGN_FLAGS = {
    "--noise_sd": "--sigma", "--noise-sd": "--sigma", "--outdir": "--out", "--outfile": "--out",
    "--batch_size": "--batch", "--batch-size": "--batch", "--lr_step_size": "--lr-step",
    "--num-noise-vec": "--copies", "--num_noise_vec": "--copies", "--m_train": "--copies",
    "--weight_decay": "--weight-decay", "--gpu": "--device",
    "--num_steps": "--steps", "--num-steps": "--steps", "--epsilon": "--eps",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2 (no usage dump); a
    choice that is not one, or an unknown flag, is answered with the closest one."""

    def error(self, message: str) -> NoReturn:
        message += self._closest_flag(message)
        # under torchrun every rank parses the same argv: rank 0's line speaks for all
        self.exit(2, f"{self.prog}: error: {safe_text(message)} (see --help)\n" if Dist.from_env().main else None)

    def _closest_flag(self, message: str) -> str:
        """``"; did you mean --sigma?"`` for the first unknown flag of an "unrecognized arguments"
        message: our name for another tool's spelling, else the closest of this command's flags."""
        prefix = "unrecognized arguments: "
        flags = [w.split("=")[0] for w in message.removeprefix(prefix).split() if w.startswith("--")]
        if not message.startswith(prefix) or not flags:
            return ""
        ours = [f for f in self._option_string_actions if f.startswith("--")
                and self._option_string_actions[f].help != argparse.SUPPRESS]
        if FOREIGN_FLAGS.get(flags[0]) in ours:
            return f"; did you mean {FOREIGN_FLAGS[flags[0]]}?"
        return did_you_mean(flags[0].replace("_", "-"), ours, show=str)

    def _check_value(self, action: argparse.Action, value: object) -> None:  # a choice, with a hint
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            raise argparse.ArgumentError(action, e.message + did_you_mean(value, action.choices or ())) from None


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

class Renamed(argparse.Action):
    """A former flag: refused in one line saying what replaced it (``replaced_by``)."""

    def __init__(self, option_strings: list[str], dest: str, *, replaced_by: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                         **kwargs)
        self.replaced_by = replaced_by

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed {self.replaced_by}")


def add_renamed(p: argparse.ArgumentParser, renamed: Mapping[str, str]) -> None:
    """Keep each former flag of ``renamed`` (old flag -> ``"--new (why)"``) as an error."""
    for old, replaced_by in renamed.items():
        p.add_argument(old, action=Renamed, replaced_by=replaced_by)


def add_data_args(p: argparse.ArgumentParser, *, split: str = "test") -> None:
    p.add_argument("--dataset", required=True, help=f"dataset name ({', '.join(DATASETS.names())})")
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
