"""The examples users copy must run as written (smoothing-adversarial #9: a README flag that did
not exist). Every ``robustmaxup ...`` command in the README's shell blocks and in the CLI
modules' docstrings is parsed by that subcommand's real parser, and every call in the README's
Python blocks binds to the real signature of the function it names."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
from pathlib import Path

import pytest

from robustmaxup.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _commands(text: str) -> list[str]:
    """Each ``robustmaxup`` invocation in ``text``, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()
        m = re.search(r"(?:^|-m )robustmaxup (?:-- )?(\w+.*)$", line)
        if m:
            found.append(m.group(1))
    return found


def _doc_commands() -> list[tuple[str, str]]:
    out = [("README", c) for block in _blocks(README, "bash") for c in _commands(block)]
    for name in SUBCOMMANDS:
        doc = importlib.import_module(f"robustmaxup.cli.{name}").__doc__ or ""
        out += [(f"cli/{name}.py", c) for c in _commands(doc)]
    return out


DOC_COMMANDS = _doc_commands()


def test_the_docs_have_commands_for_every_subcommand():
    """The extraction itself works: a broken regex would make the parametrised test vacuous."""
    used = {shlex.split(c)[0] for _, c in DOC_COMMANDS}
    assert used >= {"train", "certify", "predict", "analyze", "attack"}, used
    assert len([1 for where, _ in DOC_COMMANDS if where == "README"]) >= 12


@pytest.mark.parametrize("where,command", DOC_COMMANDS, ids=[f"{w}:{c[:40]}" for w, c in DOC_COMMANDS])
def test_documented_command_parses(where, command):
    tokens = shlex.split(command)
    sub, rest = tokens[0], tokens[1:]
    assert sub in SUBCOMMANDS, f"{where}: unknown subcommand in {command!r}"
    parser = importlib.import_module(f"robustmaxup.cli.{sub}").build_parser()
    known = set(parser._option_string_actions)
    flags = [t.split("=")[0] for t in rest if t.startswith("--")]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{where}: {command!r} uses flags {sub} does not have: {unknown}"
    if "..." in rest:  # an elided example: its flags exist, the rest is not a full command line
        return
    try:
        parser.parse_args(rest)
    except SystemExit as exc:  # argparse's exit: the documented line is not valid
        pytest.fail(f"{where}: {command!r} does not parse (exit {exc.code})")


def _python_calls() -> list[tuple[str, object, int, list[str]]]:
    """(text, callable, positional count, keyword names) for each call of a robustmaxup name."""
    calls = []
    for block in _blocks(README, "python"):
        tree = ast.parse(block)
        names: dict[str, object] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("robustmaxup"):
                module = importlib.import_module(node.module)
                names.update({a.asname or a.name: getattr(module, a.name) for a in node.names})
        for node in tree.body:  # instances: `smooth = Smooth(...)` binds methods to the class
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name) and inspect.isclass(names.get(node.value.func.id))):
                names[node.targets[0].id] = names[node.value.func.id]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func, extra = None, 0
            if isinstance(node.func, ast.Name) and node.func.id in names:
                func = names[node.func.id]
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                owner = names.get(node.func.value.id)
                if inspect.isclass(owner):
                    func, extra = getattr(owner, node.func.attr), 1  # unbound: `self` comes first
            if func is not None and callable(func):
                keywords = [k.arg for k in node.keywords if k.arg]
                calls.append((ast.unparse(node)[:60], func, len(node.args) + extra, keywords))
    return calls


PY_CALLS = _python_calls()


def test_the_readme_python_blocks_call_the_library():
    texts = " ".join(t for t, *_ in PY_CALLS)
    for name in ("load_model", "Smooth(", "smooth.certify", "certify_dataset", "evaluate_dataset",
                 "AttackConfig", "TrainConfig", "pgd(", "smooth_pgd"):
        assert name in texts, name


@pytest.mark.parametrize("text,func,npos,keywords", PY_CALLS, ids=[c[0] for c in PY_CALLS])
def test_readme_python_call_binds(text, func, npos, keywords):
    signature = inspect.signature(func)
    try:
        signature.bind(*[None] * npos, **{k: None for k in keywords})
    except TypeError as exc:
        pytest.fail(f"README: `{text}` does not match {getattr(func, '__qualname__', func)}{signature}: {exc}")
