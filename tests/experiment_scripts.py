"""The scripts of ``experiments/`` as modules, for tests (they are scripts, not package code)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` imported as module ``experiments.<name>`` (registered in
    ``sys.modules``, as dataclasses need)."""
    qualified = f"experiments.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[qualified]
        raise
    return module


def script_fixture(name: str):
    """A module-scoped pytest fixture giving ``experiments/<name>.py`` (``chk =
    script_fixture("check_precision")`` at a test module's top level)."""

    @pytest.fixture(scope="module")
    def fixture() -> ModuleType:
        return load_experiment(name)

    return fixture
