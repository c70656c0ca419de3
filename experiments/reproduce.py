"""Certified-accuracy table of every smoothing method (Cohen et al. 2019 Table style): train each
method with its paper's own recipe, certify the same test images, analyze.

Claim: Gaussian-noise MaxUp gives a higher average certified radius (ACR) than Gaussian
augmentation at the same σ, and sits with the stronger certified-robustness baselines
(SmoothAdv, SmoothMix, consistency, MACER), each trained the way its authors trained it
(``robustmaxup train --recipe``) and all certified by the same code on the same images.
``--budget`` makes the comparison MaxUp claims to win: every method gets the same compute.

Evidence: ``--preset digits`` runs on 2 CPU cores; its output is written with ``--results``
(the table, every run's exact command, the git SHA, hardware and wall time of each step).
``--preset cifar10`` is the same protocol on CIFAR-10 (each method's recipe: ResNet-110 and the
paper's epochs, batch, schedule and options; 500 test images, n = 100,000) and needs a GPU.
Scaled down to 2 CPU cores (``--methods gaussian "maxup m=4" --epochs 10
--train-flags="--arch cifar_resnet20" --n 1000 --max-images 200``, 94 min) it gave ACR 0.268 for
MaxUp against 0.237 for Gaussian (``experiments/results/cifar10_cpu_resnet20.md``).

Resumable: rerunning the same command continues where the last one stopped. Every training runs
``robustmaxup train --resume`` (continues from its ``last.pt``; a finished run is a quick no-op
that leaves ``last.pt`` untouched) and every certification ``robustmaxup certify --resume``
(continues the TSV from its last complete row; a complete TSV is left as it is). So a session
whose shell commands are killed after 10 minutes runs one command per shell call, e.g. ::

    timeout -k 30 560 python experiments/reproduce.py --preset cifar10 --data-root data/cifar10 \\
        --methods gaussian "maxup m=4" --sigma 0.25 --sequential --out runs/c10 \\
        --results experiments/results/cifar10_sigma0.25

and repeats it, unchanged, while it exits 124 (or 137: killed by ``timeout``); exit 0 means the
table and the results are written. At most the epoch or image in progress at the kill is lost
(redone by the next call). The out directory must hold the same plan: a run directory or TSV
made with other settings is refused in one line by the library's resume checks (exit 2; so is a
run directory that holds more epochs than the plan trains). ``--fresh`` deletes the out
directory first (only one that holds nothing but what this script writes); ``--dry-run``
prints the plan's commands and runs nothing. Each step logs as the command does by hand (epoch
lines; off a terminal a progress line with its ETA at most once a minute), so a killed call's
log shows how far it got. ``--data-root`` for CIFAR-10 is a folder holding
``cifar-10-batches-py/`` (or its files; read directly, nothing to decode), a folder of
``train/<class>/`` and ``test/<class>/`` images, or the path of a ``.tar.gz`` of either (decoded
once into the cache, ``$ROBUSTMAXUP_CACHE`` or ``~/.cache/robustmaxup``, and read from there by
later calls).

Step times survive kills: they are computed from the records, not from this process's clock.
Training seconds are the sum of ``epoch_seconds`` over the epochs in the run directory's
``metrics.jsonl`` (the training passes only: start-up, evaluation and checkpointing are not
counted, nor is the time lost to an epoch that a kill cut short: it is redone); certification
seconds are the sum of the TSV's per-image ``time`` column (start-up, the model and data loading
and an image a kill cut short are not counted). ``this_call_s`` is what the steps took in this
process (for a step already done, only its start-up and checks).

Presets:

* ``cifar10``: every method trains with its recipe unchanged (``--recipe NAME --dataset
  cifar10``), so epochs differ by method (Cohen 90, SmoothAdv/SmoothMix/consistency 150,
  MACER 440), as in the papers.
* ``digits``: a derivation, stated explicitly in :data:`DIGITS_DERIVATION`: each recipe's values
  with the architecture, epochs, batch and learning-rate schedule replaced by digits-sized ones
  (the method's options, learning rate, momentum, weight decay and step structure are the
  recipe's).

Certification: fixed n (Cohen et al.'s CERTIFY: ``--n0``, ``--n``), or with ``--sequential``
``certify --sequential --n-max N --radii <the preset's radii>`` (N: the preset's n), which stops
sampling an image once every radius of the table is decided; the output states the mode and,
for sequential, the mean samples drawn per image. ``--n``, ``--n0`` and ``--max-images K``
(certify's ``--max``: K images spread over the preset's ``--skip`` selection) override the
preset for smoke runs; ``--train-flags "FLAGS"`` appends FLAGS to every training command (e.g.
``--train-flags="--max-train 256 --epochs 1"``; they are applied last, so they win).

Epochs and budgets (both stated in the output):

* ``--epochs N`` gives every method N epochs; each method's epoch-counted values (step length,
  milestones, warm-ups) are scaled by N / its recipe's epochs.
* ``--budget`` gives every method the compute of the Gaussian run: a method whose estimated cost
  per training example (``Method.cost()`` plus its weight perturbation's, in forward passes,
  checked against counted forwards in tests/test_method_cost.py) is c times Gaussian's gets
  ``round(E_gaussian / c)`` epochs (at least 1, which then exceeds the budget: flagged), with its
  epoch-counted values scaled the same way. ``--measure-cost STEPS`` replaces the estimate by the
  measured time of STEPS training steps of each method on the run's device (kept in the out
  directory's ``measured_cost.json`` and reused by the next call, so a resumed call plans the
  same epochs).

Usage::

    python experiments/reproduce.py --preset digits --out runs/reproduce-digits \\
        --results experiments/results/digits_sigma0.25
    python experiments/reproduce.py --preset cifar10 --data-root DATA --out runs/c10
    python experiments/reproduce.py --preset cifar10 --data-root DATA --budget --out runs/c10-budget
    # smoke run of the CIFAR-10 commands (minutes on a GPU):
    python experiments/reproduce.py --preset cifar10 --data-root DATA --methods gaussian "maxup m=4" \\
        --sequential --train-flags="--max-train 512 --epochs 1 --max-eval 100" --max-images 4 \\
        --out runs/c10-smoke --fresh
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from robustmaxup.certify.bounds import (DEFAULT_SEQUENCE, certified_radius, clopper_pearson_lower,
                                        confidence_sequence)
from robustmaxup.certify.tsv import read_certify, read_sidecar
from robustmaxup.cli import main as cli
from robustmaxup.cli.train import build_parser as train_parser, config_from_args
from robustmaxup.methods import build_method
from robustmaxup.runtime.dist import resolve_device
from robustmaxup.runtime.io import atomic_write_json, atomic_write_text
from robustmaxup.runtime.records import provenance
from robustmaxup.train import RECIPES, TrainConfig, setup, train_batch
from robustmaxup.train.checkpointing import read_metrics
from robustmaxup.train.loop import build_perturbation

# column label -> (recipe, flags given over it)
METHOD_RUNS: dict[str, tuple[str, list[str]]] = {
    "gaussian": ("cohen", []),
    "maxup m=4": ("maxup", []),
    "maxup m=8": ("maxup", ["--copies", "8"]),
    "smoothadv": ("smoothadv", []),
    "smoothmix": ("smoothmix", []),
    "consistency": ("consistency", []),
    "macer": ("macer", []),
}

#: how the digits preset derives from the CIFAR-10 recipes: these flags replace the recipe's
#: values (an 8x8 input needs a small CNN; 1,437 training images need few epochs and a small
#: batch); everything else is the recipe's.
DIGITS_DERIVATION = ["--dataset", "digits", "--arch", "digits_cnn", "--epochs", "12", "--batch", "64",
                     "--schedule", "step", "--lr-step", "8"]

#: ``certify``: flags of every certification (n0 and n, or n_max when sequential, are added by
#: :func:`certify_flags`); ``radii``: the table's, and the sequential runs' target radii
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "train": DIGITS_DERIVATION,
        "certify": ["--dataset", "digits", "--alpha", "0.001", "--batch", "1000", "--skip", "3"],
        "n0": 100, "n": 1000,
        "radii": ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.75"],
    },
    "cifar10": {
        "train": ["--dataset", "cifar10"],
        "certify": ["--dataset", "cifar10", "--alpha", "0.001", "--batch", "1000", "--skip", "20"],
        "n0": 100, "n": 100_000,
        "radii": ["0", "0.25", "0.5", "0.75", "1.0"],
    },
}

#: epoch-counted method and perturbation options, scaled with the epochs
_WARMUPS = ("warmup", "awp_warmup", "amp_warmup")

#: what this script writes in ``--out`` besides the run directories and TSVs (``--fresh`` deletes
#: only a directory holding nothing else)
TABLE, PLOT, COST_CACHE = "table.md", "certified_accuracy.png", "measured_cost.json"


def recipe_for(recipe: str, sigma: str | None) -> tuple[str, list[str]]:
    """The recipe for ``sigma`` (a σ-specific one such as ``smoothmix_s0.5`` where it exists) and
    the flags still needed (``--sigma`` when the recipe has another σ)."""
    if sigma is None:
        return recipe, []
    specific = f"{recipe}_s{float(sigma)}"
    if specific in RECIPES:
        return specific, []
    if RECIPES.get(recipe).values().get("sigma") == float(sigma):
        return recipe, []
    return recipe, ["--sigma", sigma]


def _config(argv: list[str]) -> TrainConfig:
    """The config ``robustmaxup train argv`` would run (``argv`` without the subcommand)."""
    return config_from_args(train_parser().parse_args(argv))


def estimated_cost(cfg: TrainConfig) -> float:
    """Compute per training example of ``cfg``'s method and weight perturbation (forward-pass
    units of one example; Gaussian training is 3)."""
    method = build_method(cfg.method, **cfg.method_args)
    perturbation = build_perturbation(cfg.perturbation)
    extra = perturbation.cost(method.loss_cost()) if perturbation is not None else 0.0
    return method.cost() + extra


def measured_cost(argv: list[str], steps: int) -> float:
    """Seconds per training example of ``steps`` training steps (after one untimed) of the run
    ``argv`` would make, on its device (a throw-away run directory; nothing else is written)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config([*argv, "--out", str(Path(tmp) / "run")])
        cfg.max_train, cfg.max_eval, cfg.val_size, cfg.quiet = cfg.batch * (steps + 2), 0, 0, True
        run = setup(cfg)
        try:
            run.loaders["train"].set_epoch(0)
            batches = iter(run.loaders["train"])
            x, y = next(batches)
            train_batch(run, x, y)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                x, y = next(batches)
                train_batch(run, x, y)
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            return (time.perf_counter() - t0) / (steps * cfg.batch)
        finally:
            run.dist.close()


def scaled_flags(cfg: TrainConfig, epochs: int) -> list[str]:
    """Flags that give ``cfg`` ``epochs`` epochs with every epoch-counted value (step length,
    milestones, warm-ups) scaled by ``epochs / cfg.epochs`` (rounded; milestones at least 1)."""
    ratio = epochs / cfg.epochs
    flags = ["--epochs", str(epochs)]
    if cfg.schedule == "step":
        flags += ["--lr-step", str(max(1, round(cfg.lr_step * ratio)))]
    if cfg.schedule == "multistep" and cfg.lr_milestones:
        milestones = sorted({max(1, round(m * ratio)) for m in cfg.lr_milestones})
        flags += ["--lr-milestones", *map(str, milestones)]
    values = {**cfg.method_args, **(cfg.perturbation.flat() if cfg.perturbation else {})}
    method = build_method(cfg.method, **cfg.method_args)
    values.update({k: v for k, v in method.hparams().items() if k not in values})
    for key in _WARMUPS:
        if values.get(key):
            flags += ["--" + key.replace("_", "-"), str(max(1, round(values[key] * ratio)))]
    return flags


class StepFailed(Exception):
    """A ``robustmaxup`` step exited non-zero (it has printed its one-line error)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _run(argv: list[str]) -> float:
    """Run ``robustmaxup argv`` in this process; its wall time in seconds (StepFailed if it fails)."""
    print(f"\n$ robustmaxup {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = cli(argv)
    if code != 0:
        raise StepFailed(code)
    return time.perf_counter() - t0


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _radius_cap_note(n: int, alpha: float, sigma: float, sequential: bool) -> str:
    """No certificate can exceed the radius of n unanimous votes: σ·Φ⁻¹(α^(1/n)) at a fixed n;
    sequentially, the default confidence sequence's lower bound after n_max unanimous votes."""
    if not sequential:
        cap = certified_radius(clopper_pearson_lower(n, n, alpha), sigma)
        return f"largest certifiable radius at n = {n}, alpha = {alpha}: {cap:.4f}"
    seq = confidence_sequence(DEFAULT_SEQUENCE)
    lower = float(seq.lower(np.array([[n]]), np.array([n]), alpha, (n,))[0])
    return (f"largest certifiable radius at n_max = {n}, alpha = {alpha} (sequential, "
            f"{seq.name}): {certified_radius(lower, sigma):.4f}")


def certify_flags(preset: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The certification flags of every column: the preset's, its n0 and n (or ``--sequential
    --n-max n --radii <the preset's radii>``), with the ``--n0``/``--n``/``--max-images``
    overrides."""
    n0, n = args.n0 or preset["n0"], args.n or preset["n"]
    flags = [*preset["certify"], "--n0", str(n0)]
    if args.sequential:
        flags += ["--sequential", "--n-max", str(n), "--radii", *preset["radii"]]
    else:
        flags += ["--n", str(n)]
    if args.max_images is not None:
        flags += ["--max", str(args.max_images)]
    return flags


def run_name(label: str) -> str:
    """The run directory (and TSV stem) of a column: ``maxup m=4`` -> ``maxup_m4``."""
    return label.replace(" ", "_").replace("=", "")


def _measured(label: str, argv: list[str], args: argparse.Namespace, cache: dict[str, Any]) -> float:
    """Measured cost of ``argv`` (``cache``'s if it was measured the same way before)."""
    key = {"argv": argv, "steps": args.measure_cost, "device": args.device}
    hit = cache.get(label)
    if isinstance(hit, dict) and {k: hit.get(k) for k in key} == key:
        return float(hit["seconds_per_example"])
    cost = measured_cost([*argv, "--device", args.device], args.measure_cost)
    cache[label] = {**key, "seconds_per_example": cost}
    return cost


def plan(preset: dict[str, Any], labels: list[str], args: argparse.Namespace,
         root: list[str], cost_cache: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every column's training command and the epochs/budget arithmetic behind it.
    ``cost_cache``: measured costs of earlier calls, reused and completed (``--measure-cost``)."""
    cost_cache = {} if cost_cache is None else cost_cache
    base: dict[str, list[str]] = {}
    for label in labels:
        recipe, extra = METHOD_RUNS[label]
        recipe, sigma_flags = recipe_for(recipe, args.sigma)
        base[label] = ["--recipe", recipe, *preset["train"], *root, *extra, *sigma_flags]
    configs = {label: _config([*argv, "--out", "unused"]) for label, argv in base.items()}
    reference = configs.get("gaussian") or _config(["--recipe", "cohen", *preset["train"], "--out", "unused"])
    ref_epochs = args.epochs or reference.epochs
    costs: dict[str, float] = {}
    if args.budget:
        ref_argv = base.get("gaussian") or ["--recipe", "cohen", *preset["train"], *root]
        if args.measure_cost:
            costs = {label: _measured(label, argv, args, cost_cache) for label, argv in base.items()}
            ref_cost = costs.get("gaussian") or _measured("gaussian", ref_argv, args, cost_cache)
        else:
            costs = {label: estimated_cost(cfg) for label, cfg in configs.items()}
            ref_cost = estimated_cost(reference)
    out = {}
    for label, argv in base.items():
        cfg = configs[label]
        row: dict[str, Any] = {"recipe": cfg.recipe, "recipe_epochs": cfg.epochs}
        epochs = None
        if args.budget:
            relative = costs[label] / ref_cost
            exact = ref_epochs / relative
            epochs = max(1, round(exact))
            row.update(cost=costs[label], relative_cost=relative, budget_epochs=exact,
                       over_budget=exact < 0.5)
        elif args.epochs:
            epochs = args.epochs
        flags = scaled_flags(cfg, epochs) if epochs is not None and epochs != cfg.epochs else []
        train = ["train", *argv, *flags, *args.train_flags]  # the extra flags last: they win
        row.update(epochs=_config([*train[1:], "--out", "unused"]).epochs, flags=flags, train=train)
        out[label] = row
    return out


def _budget_note(rows: dict[str, dict[str, Any]], source: str, ref_epochs: int) -> str:
    lines = [f"# equal-compute budget: {ref_epochs} Gaussian epochs; cost per example {source}"]
    for label, r in rows.items():
        flag = "  (at least 1 epoch: OVER budget)" if r["over_budget"] else ""
        lines.append(f"#   {label}: {r['relative_cost']:.2f}x Gaussian -> {r['epochs']} epochs "
                     f"(recipe {r['recipe']}: {r['recipe_epochs']}){flag}")
    return "\n".join(lines) + "\n"


def recorded_times(run_dir: Path, tsv: Path) -> dict[str, Any]:
    """Step times from the records, which survive kills: training = the sum of ``epoch_seconds``
    over the epochs of ``run_dir``'s metrics.jsonl (a partial epoch cut by a kill is not there),
    certification = the sum of the TSV's per-image ``time`` column (complete rows only)."""
    epochs = read_metrics(run_dir)
    rows = read_certify(tsv)[0] if tsv.is_file() else []
    return {"train_s": round(sum(float(m.get("epoch_seconds") or 0.0) for m in epochs), 3),
            "certify_s": round(sum(r.time for r in rows), 3),
            "epochs_recorded": len(epochs), "images_recorded": len(rows)}


def training_sessions(run_dir: Path) -> list[dict[str, Any]]:
    """The calls that trained ``run_dir`` (its config.json's ``sessions``: the epoch each began
    from and its provenance); [] if it has none."""
    try:
        sessions = json.loads((run_dir / "config.json").read_text()).get("sessions")
    except (OSError, ValueError, AttributeError):
        return []
    return sessions if isinstance(sessions, list) else []


def git_note(info: dict[str, Any]) -> str:
    """``git <sha>`` with the tree's state: ``(clean)``, ``(dirty tree)`` or ``(state unknown)``."""
    state = {False: "clean", True: "dirty tree"}.get(info.get("git_dirty"), "state unknown")
    return f"git {info.get('git_sha') or 'unknown'} ({state})"


def sessions_note(sessions: dict[str, list[dict[str, Any]]], epochs: dict[str, int]) -> str:
    """One line naming, per method, the calls that trained it: the epochs each did, its git
    commit and device (a table trained over several calls, or machines, says so)."""
    parts = []
    for label, calls in sessions.items():
        spans = []
        for i, s in enumerate(calls):
            first = int(s.get("from_epoch", 0)) + 1
            last = int(calls[i + 1].get("from_epoch", 0)) if i + 1 < len(calls) else epochs[label]
            p = s.get("provenance") or {}
            spans.append(f"epochs {first}-{last}: {git_note(p)}, {p.get('device', 'device unknown')}")
        parts.append(f"{label} in {len(calls)} call{'s' * (len(calls) != 1)} ({'; '.join(spans)})"
                     if calls else f"{label}: no sessions recorded")
    return "# training: " + "; ".join(parts) + "\n"


def mean_samples(tsv: Path) -> float | None:
    """Mean estimation samples per image of a sequential TSV (its ``n_used``); None otherwise."""
    used = [r.n_used for r in read_certify(tsv)[0] if r.n_used is not None]
    return float(np.mean(used)) if used else None


def _foreign_entries(out: Path) -> list[str]:
    """Names in ``out`` that this script did not write (``--fresh`` deletes only without any)."""
    names = {run_name(label) for label in METHOD_RUNS}
    foreign = []
    for p in sorted(out.iterdir()):
        n = p.name
        ours = (n in (TABLE, PLOT, COST_CACHE) and p.is_file()
                or n in names and p.is_dir() and not p.is_symlink()
                or any(n.startswith(name + ".tsv") for name in names) and p.is_file()
                or n.startswith(".") and n.endswith(".tmp"))
        if not ours:
            foreign.append(n)
    return foreign


def _error(message: str, code: int = 2) -> int:
    print(f"reproduce.py: error: {message}", file=sys.stderr, flush=True)
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train (each method's recipe), certify and tabulate every "
                                            "smoothing method; rerun the same command to resume.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=None,
                   help="every method gets this many epochs (with --budget: Gaussian's)")
    p.add_argument("--budget", action="store_true",
                   help="give every method the compute of the Gaussian run (epochs / relative cost)")
    p.add_argument("--measure-cost", type=int, default=0, metavar="STEPS",
                   help="with --budget: time STEPS training steps per method instead of the estimate")
    p.add_argument("--sigma", default=None, help="default: each recipe's (0.25)")
    p.add_argument("--methods", nargs="*", default=None, help=f"subset of: {', '.join(METHOD_RUNS)}")
    p.add_argument("--sequential", action="store_true",
                   help="certify --sequential --n-max N --radii <the preset's radii> (N: the preset's n)")
    p.add_argument("--n", type=int, default=None, help="certification samples (n_max with --sequential); "
                                                        "default: the preset's")
    p.add_argument("--n0", type=int, default=None, help="selection samples; default: the preset's")
    p.add_argument("--max-images", type=int, default=None, metavar="K",
                   help="certify K images spread over the preset's selection (certify --max)")
    p.add_argument("--train-flags", action="append", default=[], metavar="FLAGS",
                   help='flags appended to every training command, e.g. --train-flags="--max-train 256 '
                        '--epochs 1" (quote them; repeatable)')
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--fresh", action="store_true",
                   help="delete --out first (default: continue the runs and TSVs already there)")
    p.add_argument("--dry-run", action="store_true", help="print the plan's commands, run nothing")
    p.add_argument("--results", default=None,
                   help="write PATH.md, PATH.json (table, configs, timings) and PATH.png (the plot)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.measure_cost and not args.budget:
        p.error("--measure-cost needs --budget")
    labels = args.methods or list(METHOD_RUNS)
    unknown = [label for label in labels if label not in METHOD_RUNS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; choose from: {', '.join(map(repr, METHOD_RUNS))}")
    try:
        args.train_flags = [f for text in args.train_flags for f in shlex.split(text)]
    except ValueError as e:
        p.error(f"--train-flags: {e}")
    try:
        return _main(args, labels)
    except StepFailed as e:
        return e.code


def _main(args: argparse.Namespace, labels: list[str]) -> int:
    t_call = time.perf_counter()
    preset = PRESETS[args.preset]
    root = ["--data-root", args.data_root] if args.data_root else []
    out = Path(args.out)
    if args.fresh and os.path.lexists(out) and not args.dry_run:
        if out.is_symlink() or not out.is_dir():
            return _error(f"--fresh: {out} is not a directory; not deleting it")
        foreign = _foreign_entries(out)
        if foreign:
            return _error(f"--fresh: {out} holds {foreign[0]!r}, which this script did not write; "
                          "not deleting it (remove it yourself or choose another --out)")
    cache_path = out / COST_CACHE
    cost_cache: dict[str, Any] = {}
    if args.measure_cost and not args.fresh and cache_path.is_file():
        try:
            cost_cache = json.loads(cache_path.read_text())
        except ValueError:
            cost_cache = {}
    rows = plan(preset, labels, args, root, cost_cache)
    budget_note = ""
    if args.budget:
        source = (f"measured over {args.measure_cost} steps on {args.device}" if args.measure_cost
                  else "estimated by Method.cost() (forward passes per example)")
        ref_epochs = args.epochs or _config(["--recipe", "cohen", *preset["train"], "--out", "u"]).epochs
        budget_note = _budget_note(rows, source, ref_epochs)
        print(budget_note, flush=True)
    certify = certify_flags(preset, args)
    commands = {}
    for label in labels:
        run_dir = out / run_name(label)
        tsv = out / f"{run_dir.name}.tsv"
        commands[label] = {
            "train": [*rows[label]["train"], "--device", args.device, "--out", str(run_dir), "--resume"],
            "certify": ["certify", str(run_dir / "last.pt"), *certify, *root, "--device", args.device,
                        "--out", str(tsv), "--resume"],
        }
    tsvs = {label: out / f"{run_name(label)}.tsv" for label in labels}
    analyze = ["analyze", *map(str, tsvs.values()), "--radii", *preset["radii"], "--plot", str(out / PLOT),
               "--out", str(out / TABLE)]
    if args.dry_run:
        for label in labels:
            print(f"robustmaxup {shlex.join(commands[label]['train'])}")
            print(f"robustmaxup {shlex.join(commands[label]['certify'])}")
        print(f"robustmaxup {shlex.join(analyze)}")
        return 0
    if args.fresh and out.exists():
        shutil.rmtree(out)
    if args.measure_cost:
        atomic_write_json(cache_path, cost_cache)
    this_call: dict[str, dict[str, float]] = {}
    for label in labels:
        this_call[label] = {"train": round(_run(commands[label]["train"]), 3)}
        this_call[label]["certify"] = round(_run(commands[label]["certify"]), 3)
    _run(analyze)
    timings = {label: {**recorded_times(out / run_name(label), tsvs[label]), "this_call_s": this_call[label]}
               for label in labels}
    samples = {label: mean_samples(tsvs[label]) for label in labels} if args.sequential else {}
    n0, n = int(_flag(certify, "--n0")), int(_flag(certify, "--n-max" if args.sequential else "--n"))
    alpha = float(_flag(certify, "--alpha"))
    certification = {"mode": "sequential" if args.sequential else "fixed n", "n0": n0, "alpha": alpha,
                     "skip": int(_flag(certify, "--skip")), "max_images": args.max_images,
                     **({"n_max": n, "radii": [float(r) for r in preset["radii"]],
                         "sequence": DEFAULT_SEQUENCE, "mean_n_used": samples}
                        if args.sequential else {"n": n})}
    time_note = _time_note(timings)
    print(time_note, end="", flush=True)
    if args.results:
        info = provenance(resolve_device(args.device))
        trained = {label: training_sessions(out / run_name(label)) for label in labels}
        sigma = args.sigma or "recipe (0.25)"
        epochs = ", ".join(f"{label} {rows[label]['epochs']}" for label in labels)
        extra = f"; extra training flags: {shlex.join(args.train_flags)}" if args.train_flags else ""
        header = (f"# {args.preset}, σ = {sigma}, each method's recipe"
                  f"{' (digits derivation: ' + ' '.join(DIGITS_DERIVATION) + ')' if args.preset == 'digits' else ''}"
                  f"; epochs: {epochs}{extra}\n"
                  f"# {_certify_note(certification)}\n"
                  f"# {git_note(info)}, {info['device']}, torch {info['torch']}\n"
                  f"{sessions_note(trained, {label: timings[label]['epochs_recorded'] for label in labels})}"
                  f"# {_radius_cap_note(n, alpha, float(args.sigma or 0.25), args.sequential)}\n"
                  f"{time_note}{budget_note}")
        atomic_write_text(args.results + ".md", header + (out / TABLE).read_text())
        if (out / PLOT).is_file():
            shutil.copyfile(out / PLOT, args.results + ".png")
        atomic_write_json(args.results + ".json", {
            "preset": args.preset, "sigma": args.sigma, "budget": args.budget, "plan": rows,
            "train_flags": args.train_flags, "certification": certification,
            "columns": {label: str(t) for label, t in tsvs.items()}, "commands": commands,
            "timings_s": timings, "this_call_total_s": round(time.perf_counter() - t_call, 3),
            "provenance": info, "training_sessions": trained,
            "sidecars": {label: read_sidecar(t) for label, t in tsvs.items()},
        })
    return 0


def _certify_note(c: dict[str, Any]) -> str:
    subset = f"skip {c['skip']}" + (f", max {c['max_images']} images" if c["max_images"] is not None else "")
    if c["mode"] != "sequential":
        return f"certification: fixed n = {c['n']} (n0 = {c['n0']}), alpha = {c['alpha']}, {subset}"
    used = ", ".join(f"{label} {v:,.0f}" for label, v in c["mean_n_used"].items() if v is not None)
    return (f"certification: sequential ({c['sequence']}, stops once every radius "
            f"{', '.join(f'{r:g}' for r in c['radii'])} is decided), n_max = {c['n_max']} "
            f"(n0 = {c['n0']}), alpha = {c['alpha']}, {subset}; mean samples per image: {used}")


def _time_note(timings: dict[str, dict[str, Any]]) -> str:
    recorded = "; ".join(f"{label} train {t['train_s']:.1f} s ({t['epochs_recorded']} epochs), "
                         f"certify {t['certify_s']:.1f} s ({t['images_recorded']} images)"
                         for label, t in timings.items())
    call = "; ".join(f"{label} train {t['this_call_s']['train']:.1f} s, certify {t['this_call_s']['certify']:.1f} s"
                     for label, t in timings.items())
    return (f"# wall time from the records (training: sum of epoch_seconds in metrics.jsonl; certification: "
            f"sum of the TSV's time column; start-up, evaluation and work cut short by a kill not counted): "
            f"{recorded}\n# this call: {call}\n")


if __name__ == "__main__":
    sys.exit(main())
