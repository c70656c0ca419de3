"""Training: a typed config in, a run directory out.

- :mod:`~robustmaxup.train.config`: :class:`TrainConfig` (field names = ``robustmaxup train``
  flags), :class:`PerturbationSpec`, the flat flag-named form (``flat``/``from_flat``,
  :func:`merge_flat` layers, :func:`read_flat`), the learning-rate schedules and the option
  descriptions the CLI turns into flags;
- :mod:`~robustmaxup.train.recipes`: :data:`RECIPES`, each baseline's published CIFAR-10 set-up
  as data, every value with its source (``TrainConfig.from_recipe``, ``--recipe``);
- :mod:`~robustmaxup.train.state`: :class:`Run` (the fixed parts) and :class:`TrainState`
  (epoch, best, history, noise generator);
- :mod:`~robustmaxup.train.loop`: :func:`setup`, :func:`train`, :func:`train_epoch`,
  :func:`train_batch` (one loader batch: the method's reference steps), :func:`train_step`,
  :func:`evaluate`;
- :mod:`~robustmaxup.train.checkpointing`: ``last.pt``/``best.pt``, ``metrics.jsonl``,
  ``config.json``, resuming.

Example::

    from robustmaxup.train import TrainConfig, train
    train(TrainConfig(dataset="digits", arch="digits_cnn", method="maxup",
                      method_args={"sigma": 0.25, "copies": 4}, epochs=15, batch=64, lr=0.05,
                      out="runs/d"))
    train(TrainConfig.from_recipe("smoothadv", dataset="digits", arch="digits_cnn", epochs=2,
                                  batch=64, out="runs/d-smoothadv"))

A run directory holds ``config.json`` (the flat config, names = flags, method defaults
resolved, the recipe and the values given over it, plus provenance), ``metrics.jsonl`` (one line per epoch, rewritten from the
checkpoint), ``last.pt`` (every epoch, atomic) and ``best.pt`` (best validation metric on a
split held out from the *training* set). ``resume=True`` continues from ``last.pt`` and reaches
the same weights as an uninterrupted run.
"""

from robustmaxup.train.config import (
    Option, PerturbationSpec, TrainConfig, base_layers, lr_at, merge_flat, options, read_flat,
)
from robustmaxup.train.loop import evaluate, setup, train, train_batch, train_epoch, train_step
from robustmaxup.train.recipes import RECIPES, Recipe, Setting, recipe_table
from robustmaxup.train.state import Run, TrainState, metric_name

__all__ = [
    "TrainConfig", "PerturbationSpec", "Option", "options", "merge_flat", "read_flat", "base_layers", "lr_at",
    "RECIPES", "Recipe", "Setting", "recipe_table", "Run", "TrainState", "metric_name", "setup",
    "train", "train_epoch", "train_batch", "train_step", "evaluate",
]
