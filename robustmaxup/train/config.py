"""What defines a training run: :class:`TrainConfig`, and the one mapping between it and the flat,
flag-named dictionaries of ``config.json`` and the command line.

A config has three kinds of values:

* the core fields of :class:`TrainConfig` (``epochs``, ``lr``, ...), named like their flags;
* ``method_args``: hyper-parameters of the chosen method (``sigma``, ``m``, ...), named like the
  method's dataclass fields (and flags);
* ``perturbation``: an optional :class:`PerturbationSpec` (AWP or AMP and its arguments).

:meth:`TrainConfig.flat` writes all of them into one flat dict; a perturbation argument is
named ``<perturbation>_<field>`` (``awp_gamma``, ``awp_warmup``, ``amp_eps``, ...), whatever
order the arguments were given in, and its flag is ``--awp-gamma`` etc.
:meth:`TrainConfig.from_flat` is its exact inverse. :func:`merge_flat` stacks flat layers (a
saved ``config.json``, then the values given explicitly), the later layer winning; a layer that
names a ``recipe`` (:mod:`robustmaxup.train.recipes`) brings the recipe's values in as a base
layer right under its own values. :func:`options` describes every flat name (type, default,
help, flag) for the command line, which generates its flags from it.

Example::

    cfg = TrainConfig(dataset="digits", out="runs/d", arch="digits_cnn", method="maxup",
                      method_args={"sigma": 0.25, "copies": 4}, perturbation=PerturbationSpec("awp"))
    cfg.flat()["awp_gamma"]                     # 0.005 (AWP's default, filled in)
    TrainConfig.from_flat(cfg.flat()) == cfg    # True
    TrainConfig.from_recipe("smoothadv", dataset="cifar10", out="runs/sa").epochs   # 150
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from robustmaxup.data.augment import PADDINGS
from robustmaxup.data.registry import DATASETS
from robustmaxup.errors import UserError, did_you_mean, ref
from robustmaxup.methods import AUGMENTATIONS, METHODS, PERTURBATIONS
from robustmaxup.methods.maxup import augmentation_defaults
from robustmaxup.models import MODELS
from robustmaxup.runtime.checks import (
    FieldError, check_alpha, check_choice, check_int, check_positive, check_range,
)
from robustmaxup.runtime.limits import MAX_NOISE_DRAWS
from robustmaxup.runtime.io import check_input_path
from robustmaxup.runtime.seeds import check_seed
from robustmaxup.train.recipes import RECIPES, recipe_values

__all__ = [
    "TrainConfig", "PerturbationSpec", "Option", "options", "core_options", "method_options",
    "perturbation_options", "merge_flat", "read_flat", "SCHEDULES", "SCHEDULE_PARAMS", "lr_at",
    "RESUMABLE_CHANGES", "EPOCH_RELATIVE_SCHEDULES", "RENAMED", "STEP_STRUCTURES", "recipe_overrides",
    "upgrade_record",
]

#: Flat keys that may differ between an interrupted run and its continuation.
RESUMABLE_CHANGES = frozenset({"resume", "device", "epochs", "quiet", "workers", "out", "cache_dir"})

#: Keys of a ``config.json`` that record how a run was made but set nothing.
_RECORD_ONLY = frozenset({"provenance", "recipe_overrides", "sessions"})

#: Former flat names (and flags) -> (the names that replaced them, why). A layer or flag using one
#: is refused with a hint naming the new ones, so an old command line cannot silently change
#: meaning (see :func:`renamed_message`).
RENAMED: dict[str, tuple[tuple[str, ...], str]] = {
    "m": (("copies",), "one name for the number of noise/augmented copies of every method"),
    "m_train": (("copies",), "one name for the number of noise/augmented copies of every method"),
    "eta": (("smoothmix_eta", "consistency_eta"), "SmoothMix's mixup weight, consistency's entropy weight"),
    "beta": (("trades_beta", "macer_beta"), "TRADES' KL weight, MACER's inverse temperature"),
    "gamma": (("macer_gamma",), "MACER's hinge; the learning-rate decay is lr_gamma"),
    "awp": (("awp_gamma",), "AWP's relative perturbation size"),
    "amp": (("amp_eps",), "AMP's perturbation radius; mixed precision is precision"),
    "alpha": (("mix_alpha",), "the Beta(a, a) of mixup, CutMix and k-mixup; alpha means the failure "
                              "probability in certify"),
}


def replaced_by(old: str, flag: Callable[[str], str] = lambda name: name) -> str:
    """``"<new> (<why>)"`` for a former name, new names written by ``flag``."""
    new, why = RENAMED[old]
    return f"{' or '.join(flag(n) for n in new)} ({why})"


def renamed_message(old: str, flag: Callable[[str], str] = lambda name: name) -> str:
    """``"was renamed <new> (<why>)"`` for a former name."""
    return f"was renamed {replaced_by(old, flag)}"

#: How a loader batch becomes optimiser steps (:meth:`Method.reference_chunks`).
STEP_STRUCTURES = ("reference", "joint")

#: Keys of a saved config that a replay does not take over: the record, ``resume`` (an action,
#: not a setting: replaying a resumed run's config must not resume by itself) and ``quiet`` (a
#: display preference, which a later ``--resume --quiet`` rewrites; a replay shows its progress).
_NOT_REPLAYED = _RECORD_ONLY | {"resume", "quiet"}


# --- the weight perturbation ------------------------------------------------------------------

def _perturbation_fields(name: str) -> list[dataclasses.Field]:
    return list(dataclasses.fields(PERTURBATIONS.get(name)))


@dataclass(frozen=True)
class PerturbationSpec:
    """A weight perturbation (``"awp"``, ``"amp"``: the ``PERTURBATIONS`` registry) and its
    arguments by field name. Arguments not given are filled with the perturbation's defaults,
    so a spec always holds every argument (and two specs of one setting compare equal)."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fields = _perturbation_fields(self.name)  # unknown name: UserError listing the known ones
        names = [f.name for f in fields]
        unknown = sorted(set(self.args) - set(names))
        if unknown:
            raise FieldError(f"{self.name}_{unknown[0]}",
                             f"is not an option of {self.name} (its options: {', '.join(names)})"
                             f"{did_you_mean(unknown[0], names)}")
        full = {f.name: self.args[f.name] if f.name in self.args else f.default for f in fields}
        object.__setattr__(self, "args", full)

    def flat(self) -> dict[str, Any]:
        """``{"<name>_<field>": value}`` for every argument."""
        return {f"{self.name}_{k}": v for k, v in self.args.items()}


def _perturbation_key(key: str) -> tuple[str, str] | None:
    """``(perturbation, field)`` if ``key`` is a flat perturbation name such as ``awp_gamma``."""
    for name in PERTURBATIONS:
        prefix = name + "_"
        if key.startswith(prefix) and key[len(prefix):] in {f.name for f in _perturbation_fields(name)}:
            return name, key[len(prefix):]
    return None


# --- learning-rate schedules ------------------------------------------------------------------
# Each maps (config, 0-based epoch) to the factor applied to ``lr``; SCHEDULE_PARAMS names the
# fields it reads (a recipe using the schedule must set them).

def _step(cfg: "TrainConfig", epoch: int) -> float:
    return cfg.lr_gamma ** (epoch // cfg.lr_step)


def _multistep(cfg: "TrainConfig", epoch: int) -> float:
    return cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if epoch >= m)


def _piecewise(cfg: "TrainConfig", epoch: int) -> float:
    """Rice et al.'s piecewise schedule (locuslab/robust_overfitting train_cifar.py:248-255):
    the full rate for the first half of training, /10 until three quarters, /100 after."""
    t = epoch / cfg.epochs
    return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01


def _cosine(cfg: "TrainConfig", epoch: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


#: the largest finite float32: a learning rate, weight decay or decay factor beyond it overflows
FLOAT32_MAX = 3.4028234663852886e38  # float(torch.finfo(torch.float32).max)

SCHEDULES = {"step": _step, "multistep": _multistep, "piecewise": _piecewise, "cosine": _cosine}
SCHEDULE_PARAMS: dict[str, tuple[str, ...]] = {
    "step": ("lr_step", "lr_gamma"), "multistep": ("lr_milestones", "lr_gamma"),
    "piecewise": (), "cosine": (),
}


#: schedules that read ``epochs``: a resume that changes it stretches them (it warns)
EPOCH_RELATIVE_SCHEDULES = frozenset({"piecewise", "cosine"})


def lr_at(cfg: "TrainConfig", epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``: a pure function of the config, so a resume with the
    same settings is exact (one that changes ``epochs`` stretches the piecewise and cosine
    schedules over the new length)."""
    return cfg.lr * SCHEDULES[cfg.schedule](cfg, epoch)


# --- the config -----------------------------------------------------------------------------

def _meta(help: str, group: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
          metavar: str | None = None) -> dict[str, Any]:
    return {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar}


_DATA, _OPT, _RUN = "data and model", "optimisation (defaults: Cohen et al.'s CIFAR recipe)", "runtime"


def _not_an_option(key: str, method: str, options: list[str]) -> str:
    """Why ``key`` of ``method_args`` is refused: another method's option, or a misspelling
    (with the closest setting or option)."""
    listed = f"its options: {', '.join(map(ref, options)) or 'none'}"
    if any(key in METHODS.get(m).hparam_names() for m in METHODS):
        return f"is not an option of method {method} ({listed})"
    hint = did_you_mean(key, [*_core_names(), *options], show=ref)
    return f"is neither a training setting nor an option of method {method} ({listed}){hint}"


@dataclass
class TrainConfig:
    """Everything that defines a run. Field names are ``robustmaxup train``'s flag names; the
    method's hyper-parameters are in ``method_args`` and a weight perturbation in
    ``perturbation`` (a :class:`PerturbationSpec`; a bare name such as ``"awp"`` is accepted and
    means its defaults). Defaults: Cohen et al.'s CIFAR recipe.

    ``recipe`` records which recipe the values came from; constructing a config with it does not
    apply the recipe: :meth:`from_recipe` (or :func:`merge_flat` of a layer naming it) does.

    ``step_structure`` (see :meth:`robustmaxup.methods.Method.reference_chunks`):
    ``"reference"`` (default) splits each loader batch into the chunks the method's reference
    code takes one SGD step on each (SmoothAdv, SmoothMix, consistency: m chunks of B/m examples
    with m noise copies each, i.e. m steps of B noisy inputs); ``"joint"`` takes one step on the
    whole batch (B·m noisy inputs, m times fewer updates). Other methods take one step per
    batch either way."""

    dataset: str = field(metadata=_meta("dataset name (robustmaxup.data.DATASETS: "
                                        + ", ".join(DATASETS.names()) + ")", _DATA))
    out: str = field(metadata=_meta("run directory (must be empty or absent unless resuming)", _DATA))
    data_root: str | None = field(default=None, metadata=_meta(
        "local dataset folder or .tar.gz (digits is built in and takes none)", _DATA))
    cache_dir: str | None = field(default=None, metadata=_meta("cache for decoded archives", _DATA))
    arch: str | None = field(default=None, metadata=_meta(
        "architecture (robustmaxup.models.MODELS; default: the dataset's, "
        + ", ".join(f"{DATASETS.get(name).default_arch} for {name}" for name in DATASETS
                    if DATASETS.get(name).default_arch) + ")", _DATA))
    method: str = field(default="gaussian", metadata=_meta("training method", _DATA))
    recipe: str | None = field(default=None, metadata=_meta(
        "a paper's published set-up as the base layer (over --config's file); flags given override it "
        "(--list-recipes)",
        _DATA, choices=tuple(RECIPES.names())))
    method_args: dict[str, Any] = field(default_factory=dict)
    perturbation: PerturbationSpec | None = None
    resume: bool = field(default=False, metadata=_meta(
        "continue the run in the run directory from last.pt (its config.json gives what is not given)", _DATA))
    epochs: int = field(default=90, metadata=_meta("number of epochs", _OPT))
    batch: int = field(default=256, metadata=_meta("global batch size", _OPT))
    lr: float = field(default=0.1, metadata=_meta("learning rate", _OPT))
    momentum: float = field(default=0.9, metadata=_meta("SGD momentum", _OPT))
    nesterov: bool = field(default=False, metadata=_meta("Nesterov momentum", _OPT))
    weight_decay: float = field(default=1e-4, metadata=_meta("SGD weight decay", _OPT))
    schedule: str = field(default="step", metadata=_meta(
        "learning-rate schedule (piecewise: Rice et al.'s, lr until 1/2 of the epochs, lr/10 until "
        "3/4, then lr/100)", _OPT, choices=tuple(SCHEDULES)))
    lr_step: int = field(default=30, metadata=_meta("step schedule: epochs between decays", _OPT))
    lr_milestones: tuple[int, ...] = field(default=(), metadata=_meta(
        "multistep schedule: epoch counts after which the lr is multiplied by --lr-gamma (as "
        "MultiStepLR's milestones: 100 decays it from the logged epoch 101 on)", _OPT,
        metavar="EPOCH"))
    lr_gamma: float = field(default=0.1, metadata=_meta("step/multistep schedule: decay factor", _OPT))
    step_structure: str = field(default="reference", metadata=_meta(
        "reference: the SGD steps per loader batch of the method's reference code (SmoothAdv, "
        "SmoothMix, consistency: m steps on B/m examples x m copies); joint: one step on B x m",
        _OPT, choices=STEP_STRUCTURES))
    data_augment: bool = field(default=True, metadata=_meta(
        "no random crop/flip of training images", _OPT, flag="--no-data-augment"))
    crop_padding: str = field(default="zeros", metadata=_meta(
        "padding of the random crop (CIFAR, digits): zeros (torchvision's RandomCrop), reflect "
        "(Rice et al., AWP) or grey (AMP)", _OPT, choices=PADDINGS))
    val_size: int = field(default=-1, metadata=_meta(
        "training images held out for best.pt selection (-1: min(1000, 10%); 0: none)", _OPT))
    max_train: int = field(default=0, metadata=_meta("use only a random N-image subset of the training split (0: all)", _OPT))
    max_eval: int = field(default=1000, metadata=_meta("test images for the per-epoch metric (0: none)", _OPT))
    eval_batch: int = field(default=512, metadata=_meta("batch size of the per-epoch evaluation", _OPT))
    eval_radius: float | None = field(default=None, metadata=_meta(
        "smoothing methods: make the per-epoch metric (and best.pt's) certified accuracy at this L2 "
        "radius, from --eval-n noisy copies per image (default: accuracy under one noise draw)", _OPT,
        metavar="R"))
    eval_n: int = field(default=100, metadata=_meta("--eval-radius: noisy copies per image", _OPT))
    eval_alpha: float = field(default=0.001, metadata=_meta(
        "--eval-radius: failure probability of each image's bound", _OPT))
    precision: str = field(default="auto", metadata=_meta(
        "auto: bf16 autocast on CUDA, fp32 on CPU", _RUN, choices=("auto", "bf16", "fp32")))
    compile: bool = field(default=False, metadata=_meta("torch.compile the model", _RUN))
    seed: int = field(default=0, metadata=_meta("random seed", _RUN))
    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda, cuda:1", _RUN))
    workers: int = field(default=4, metadata=_meta("data-loading worker processes (ImageNet)", _RUN))
    quiet: bool = field(default=False, metadata=_meta("no progress bars or per-epoch logging", _RUN))

    def __post_init__(self) -> None:
        if self.arch is None and isinstance(self.dataset, str) and self.dataset in DATASETS:
            self.arch = DATASETS.get(self.dataset).default_arch  # recorded as the name it resolved to
        if isinstance(self.method_args, Mapping):  # anything else: validate() names the field
            self.method_args = dict(self.method_args)
        if isinstance(self.perturbation, str):
            self.perturbation = PerturbationSpec(self.perturbation)
        if isinstance(self.lr_milestones, (list, tuple)):  # JSON gives a list
            self.lr_milestones = tuple(self.lr_milestones)

    # --- flags <-> config: the one mapping ---------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """The config as one flat dict of flag names: core fields, then the method's arguments,
        then the perturbation's as ``<name>_<field>``. :meth:`from_flat` inverts it exactly."""
        d = {name: getattr(self, name) for name in _core_names()}
        d["lr_milestones"] = list(self.lr_milestones)  # as JSON writes it, so records compare equal
        d.update(self.method_args)
        if self.perturbation is not None:
            d.update(self.perturbation.flat())
        return d

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "TrainConfig":
        """The config of a flat dict (:meth:`flat`'s output, a ``config.json``, merged layers):
        core names are fields, ``<perturbation>_<field>`` names the perturbation's arguments,
        every other name is a method argument (``build_method`` rejects ones it does not take).
        ``recipe`` is taken as the record it is: the recipe's values come in through
        :func:`merge_flat` (or :meth:`from_recipe`), so ``from_flat`` stays the exact inverse of
        :meth:`flat`. A former name (:data:`RENAMED`) is a FieldError naming its replacement."""
        for key in flat:
            if key in RENAMED:
                raise FieldError(key, renamed_message(key))
        rest = {k: v for k, v in flat.items() if k not in _RECORD_ONLY}
        core = {k: rest.pop(k) for k in list(rest) if k in _core_names()}
        chosen: dict[str, dict[str, Any]] = {}
        for key in list(rest):
            hit = _perturbation_key(key)
            if hit is not None:
                chosen.setdefault(hit[0], {})[hit[1]] = rest.pop(key)
        if len(chosen) > 1:
            raise UserError(f"choose one weight perturbation, not {' and '.join(sorted(chosen))}")
        for name in ("dataset", "out"):
            if core.get(name) is None:
                raise FieldError(name, "is required")
        spec = PerturbationSpec(*next(iter(chosen.items()))) if chosen else None
        return cls(**core, method_args=rest, perturbation=spec)

    @classmethod
    def from_recipe(cls, recipe: str, **values: Any) -> "TrainConfig":
        """Recipe ``recipe`` (:data:`~robustmaxup.train.recipes.RECIPES`) with ``values``
        (flat names: core fields, method options, ``awp_gamma``...) overriding it.

        Example::

            TrainConfig.from_recipe("macer", dataset="cifar10", out="runs/m", epochs=10)
        """
        return cls.from_flat(merge_flat({"recipe": recipe, **values}))

    # --- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        """FieldError (naming the field) for the first bad value; cheap, touches nothing."""
        for name in ("dataset", "out"):
            if not isinstance(getattr(self, name), str):
                raise FieldError(name, "is required")
            if not getattr(self, name).strip():
                raise FieldError(name, "is empty")
        DATASETS.get(self.dataset)  # an unknown name: UserError listing the known ones
        if self.arch is None:
            raise FieldError("arch", f"is required: dataset {self.dataset} has no default architecture")
        for name in ("arch", "method", "device"):
            if not isinstance(getattr(self, name), str):
                raise FieldError(name, f"must be a name, got {getattr(self, name)!r}")
        for name in ("resume", "nesterov", "data_augment", "compile", "quiet"):
            check_choice(name, getattr(self, name), (True, False))
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch", self.batch, minimum=1)
        # rates beyond float32's range cannot even be applied to float32 weights
        check_range("lr", self.lr, 0.0, FLOAT32_MAX, lo_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        if self.nesterov and self.momentum == 0:
            raise FieldError("nesterov", "needs a momentum > 0 (Nesterov's update is a momentum update); "
                                         f"set {ref('momentum')} or drop {ref('nesterov')}")
        check_range("weight_decay", self.weight_decay, 0.0, FLOAT32_MAX)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("lr_step", self.lr_step, minimum=1)
        if not isinstance(self.lr_milestones, tuple):
            raise FieldError("lr_milestones", f"must be a list of epochs, got {self.lr_milestones!r}")
        for i, m in enumerate(self.lr_milestones):
            check_int("lr_milestones", m, minimum=0)
            if i and m <= self.lr_milestones[i - 1]:
                raise FieldError("lr_milestones", f"must increase, got {list(self.lr_milestones)}")
        if self.schedule == "multistep" and not self.lr_milestones:
            raise FieldError("lr_milestones", f"must name at least one epoch with {ref('schedule', 'multistep')} "
                                              f"(e.g. {ref('lr_milestones', (30, 60))}), or use another schedule")
        check_range("lr_gamma", self.lr_gamma, 0.0, FLOAT32_MAX, lo_open=True)
        check_choice("step_structure", self.step_structure, STEP_STRUCTURES)
        check_choice("crop_padding", self.crop_padding, PADDINGS)
        check_choice("recipe", self.recipe, (None, *RECIPES.names()))
        check_int("val_size", self.val_size, minimum=-1)  # -1: automatic
        check_int("max_train", self.max_train, minimum=0)
        check_int("max_eval", self.max_eval, minimum=0)
        check_int("eval_batch", self.eval_batch, minimum=1)
        if self.eval_radius is not None:
            check_positive("eval_radius", self.eval_radius, allow_zero=True)
        check_int("eval_n", self.eval_n, minimum=1, maximum=MAX_NOISE_DRAWS)
        check_alpha(self.eval_alpha, "eval_alpha")
        check_choice("precision", self.precision, ("auto", "bf16", "fp32"))
        check_seed(self.seed)
        check_int("workers", self.workers, minimum=0)
        if not isinstance(self.method_args, dict):
            raise FieldError("method_args", "must be a dict of the method's hyper-parameters")
        if self.perturbation is not None and not isinstance(self.perturbation, PerturbationSpec):
            raise FieldError("perturbation", f"must be a PerturbationSpec, got {self.perturbation!r}")
        method = METHODS.get(self.method)  # unknown names: UserError listing the known ones
        clash = sorted(set(method.hparam_names()) & set(_core_names()))
        if clash:
            raise UserError(_clash(self.method, clash[0]))
        unknown = sorted(set(self.method_args) - set(method.hparam_names()))
        if unknown:
            raise FieldError(unknown[0], _not_an_option(unknown[0], self.method, method.hparam_names()))
        MODELS.get(self.arch)

    def record(self, method_hparams: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`flat` with the method's resolved hyper-parameters (defaults included): what
        ``config.json`` and the checkpoints record, and what a resume is checked against."""
        return {**self.flat(), **method_hparams}


def _clash(method: str, option: str) -> str:
    return (f"method {method}'s option {option} has the name of a training setting ({ref(option)}): one "
            "name, one meaning, or config.json could not say which was set; rename the option")


def _core_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("method_args", "perturbation")]


# --- layers of flat values ------------------------------------------------------------------

def _is_method_key(key: str) -> bool:
    return key not in _core_names() and _perturbation_key(key) is None


def _expand(layers: tuple[Mapping[str, Any], ...]) -> Iterator[Mapping[str, Any]]:
    """The layers, each naming a ``recipe`` preceded by that recipe's values; FieldError for a
    former name (:data:`RENAMED`) or an unknown recipe."""
    for layer in layers:
        for key in layer:
            if key in RENAMED:
                raise FieldError(key, renamed_message(key))
        name = layer.get("recipe")
        if name is not None:
            if name not in RECIPES:
                check_choice("recipe", name, RECIPES.names())
            yield recipe_values(name)
        yield layer


def merge_flat(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Stack flat layers, the later winning key by key (a saved config, then the values given
    explicitly). A layer naming a ``recipe`` is preceded by the recipe's values, so the recipe
    is the base under that layer's own values (and above the earlier layers). Two rules keep a
    layer's choice whole: a layer that names another ``method`` drops the earlier layers' method
    options the new method does not take, and a layer that sets options of a weight
    perturbation drops the earlier layers' options of another one."""
    out: dict[str, Any] = {}
    for layer in _expand(layers):
        method = layer.get("method")
        if method is not None and method != out.get("method") and method in METHODS:
            takes = set(METHODS.get(method).hparam_names())
            out = {k: v for k, v in out.items() if not _is_method_key(k) or k in takes}
        named = {hit[0] for k in layer if (hit := _perturbation_key(k)) is not None}
        if named:
            out = {k: v for k, v in out.items()
                   if (hit := _perturbation_key(k)) is None or hit[0] in named}
        out.update(layer)
    return out


def recipe_overrides(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """For a flat record naming a recipe: ``{key: {"recipe": value, "value": value}}`` for every
    value of the recipe the record does not keep (what was given explicitly over it); ``{}``
    without a recipe."""
    name = record.get("recipe")
    if name is None or name not in RECIPES:
        return {}
    out = {}
    for key, value in recipe_values(name).items():
        now = record.get(key)
        if now != value:
            out[key] = {"recipe": value, "value": now}
    return out


def base_layers(config: str | os.PathLike | None = None, *, out: str | os.PathLike | None = None,
                resume: bool = False) -> list[dict[str, Any]]:
    """The base layer under the values given: ``config``'s (a replay); else, when resuming a run
    directory ``out`` that holds a ``config.json``, that run's own (so ``--out DIR --resume``
    alone continues it: the values given on top are checked against it as usual); else none."""
    if config is not None:
        return [read_flat(config)]
    saved = Path(out) / "config.json" if out is not None else None
    if not (resume and saved is not None and saved.is_file()):
        return []
    try:
        return [read_flat(saved)]
    except UserError:  # not a run's config.json: the run-directory checks then say what is wrong
        return []


def read_flat(path: str | os.PathLike) -> dict[str, Any]:
    """The flat values of a run's ``config.json``, as a base layer for :func:`merge_flat`:
    everything but its provenance and the ``resume`` action."""
    try:  # an existing regular file: a device such as /dev/zero would be read forever
        check_input_path(path, "file")
    except UserError as e:
        raise FieldError("config", str(e)) from None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise FieldError("config", f"file {path} is not readable JSON: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise FieldError("config", f"file {path} holds a JSON {type(data).__name__}, not an object")
    known = {opt.name for opt in options()} | _NOT_REPLAYED | set(RENAMED)
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        shown_keys = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise FieldError("config", f"file {path} is not a robustmaxup train config.json: it has keys no "
                                   f"train option has ({shown_keys})")
    return {k: v for k, v in upgrade_record(data).items() if k not in _NOT_REPLAYED}


def upgrade_record(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A flat config recorded by an earlier robustmaxup, as this one records it, so that resuming
    and replaying it compare with and rebuild the same run:

    * no ``crop_padding`` (before the setting existed): ``"zeros"``, the only padding then;
    * ``alpha`` (before the mixing methods' option was renamed ``mix_alpha``): ``mix_alpha``;
    * MaxUp's ``mix_alpha``/``k`` for an augmentation that does not use them, then recorded as the
      defaults 1.0/16: None, as recorded now (a value that was actually given stays, and is
      refused as unused)."""
    out = dict(saved)
    out.setdefault("crop_padding", "zeros")
    if "alpha" in out and "mix_alpha" not in out:  # no method of a train config had another alpha
        out["mix_alpha"] = out.pop("alpha")
    augment = out.get("augment", "gaussian")
    if out.get("method") == "maxup" and augment in AUGMENTATIONS.names():
        used = augmentation_defaults(augment)
        for name, old in (("mix_alpha", 1.0), ("k", 16)):
            if name not in used and out.get(name) == old:
                out[name] = None
    return out


# --- option descriptions (the command line generates its flags from these) ---------------------

@dataclass(frozen=True)
class Option:
    """One flat name: its value type (``bool``, ``int``, ``float``, ``str``), default (None: the
    method's or perturbation's own), help, group, flag and, for fixed sets, its choices.
    ``switch``: a flag without a value that sets ``not default`` (``--nesterov``,
    ``--no-data-augment``). ``nargs``: ``"+"`` for a list (``--lr-milestones 200 400``).
    ``perturbation``: the weight perturbation an option belongs to; ``main``: its option whose
    flag switches the perturbation on (``--awp-gamma``, ``--amp-eps``)."""

    name: str
    type: type
    default: Any
    help: str
    group: str
    flag: str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    switch: bool = False
    required: bool = False
    perturbation: str | None = None
    main: bool = False
    nargs: str | None = None


def _value_type(annotation: Any, default: Any) -> type:
    if isinstance(annotation, type) and annotation in (bool, int, float, str):
        return annotation
    text = str(annotation)
    for kind in (bool, int, float, str):
        if text.split("|")[0].strip() in (kind.__name__, f"<class '{kind.__name__}'>"):
            return kind
    return type(default) if default is not None else str


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def core_options() -> list[Option]:
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("method_args", "perturbation"):
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        many = isinstance(default, tuple)
        kind = int if many else _value_type(hints[f.name], default)
        help_text = f.metadata["help"]
        if f.name == "method":
            help_text += ": " + ", ".join(METHODS.names())
        out.append(Option(f.name, kind, default, help_text, f.metadata["group"],
                          f.metadata.get("flag") or _flag(f.name), f.metadata.get("choices"),
                          metavar=f.metadata.get("metavar"), switch=kind is bool,
                          required=f.default is dataclasses.MISSING, nargs="+" if many else None))
    return out


def method_options() -> list[Option]:
    """Every hyper-parameter of every registered method (sorted by name); the help lists the
    methods that take it and their defaults."""
    found: dict[str, tuple[type, list[str]]] = {}
    core = set(_core_names())
    for name in METHODS:
        cls = METHODS.get(name)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            if f.name in core:  # one flat name, one meaning: config.json could not say which it set
                raise UserError(_clash(name, f.name))
            default = f.default if f.default is not dataclasses.MISSING else None
            kind, users = found.setdefault(f.name, (_value_type(hints.get(f.name, f.type), default), []))
            note = f.metadata.get("help")
            users.append(f"{name}={default}" + (f" ({note})" if note else ""))
    return [Option(k, kind, None, "; ".join(users), "method options (each used only by the methods listed)",
                   _flag(k)) for k, (kind, users) in sorted(found.items())]


def perturbation_options() -> list[Option]:
    """``<name>_<field>`` for every weight perturbation's fields, flag ``--<name>-<field>``. The
    first field is the main value, whose flag switches the perturbation on (``--awp-gamma``,
    ``--amp-eps``); the others modify it."""
    out = []
    for name in PERTURBATIONS:
        cls = PERTURBATIONS.get(name)
        hints = typing.get_type_hints(cls)
        for i, f in enumerate(dataclasses.fields(cls)):
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append(Option(f"{name}_{f.name}", _value_type(hints.get(f.name, f.type), default), None,
                              f"{name}: {f.name} (default {default})",
                              "weight perturbation (wraps any method)", _flag(f"{name}_{f.name}"),
                              metavar=f.name.upper(), perturbation=name, main=i == 0))
    return out


def options() -> list[Option]:
    """Every flat name of a config: core fields, method options, perturbation options."""
    return core_options() + method_options() + perturbation_options()
