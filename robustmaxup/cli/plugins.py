"""User extensions for the command line: modules that register datasets, models, methods.

From Python a user imports their own module before calling the library. The command line
imports, before it parses anything, every module named in the environment variable
``ROBUSTMAXUP_PLUGINS`` (comma-separated module names, importable from ``PYTHONPATH``) and every
entry point of group ``robustmaxup.plugins`` of the installed packages, so what they register
(``register_dataset``, ``MODELS.register``, ``register_method``) is known to every subcommand,
its ``--help`` included, and to checkpoints made with it. A plugin that cannot be imported is
one error line naming it.

Example::

    # mylab/robust.py registers a dataset "lab" and a model "labnet"
    ROBUSTMAXUP_PLUGINS=mylab.robust robustmaxup train --dataset lab --arch labnet ...

    # or, in the plugin package's pyproject.toml:
    # [project.entry-points."robustmaxup.plugins"]
    # mylab = "mylab.robust"
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from robustmaxup.errors import UserError

PLUGINS_ENV = "ROBUSTMAXUP_PLUGINS"
ENTRY_POINT_GROUP = "robustmaxup.plugins"


def plugin_modules() -> list[str]:
    """The modules to import: ``$ROBUSTMAXUP_PLUGINS``'s, then the entry points', each once."""
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    names += [ep.value.split(":")[0] for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(names))


def load_plugins() -> list[str]:
    """Import every plugin module (:func:`plugin_modules`); the names imported. UserError (one
    line) for one that fails to import or raises while registering."""
    names = plugin_modules()
    for name in names:
        try:
            importlib.import_module(name)
        except UserError as e:
            raise UserError(f"plugin {name}: {e}") from None
        except Exception as e:  # the plugin's own code: one line naming it, not a traceback
            raise UserError(f"cannot import plugin {name} (from {PLUGINS_ENV} or the "
                            f"{ENTRY_POINT_GROUP} entry points): {type(e).__name__}: {e}") from None
    return names
