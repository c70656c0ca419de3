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

Presets:

* ``cifar10``: every method trains with its recipe unchanged (``--recipe NAME --dataset
  cifar10``), so epochs differ by method (Cohen 90, SmoothAdv/SmoothMix/consistency 150,
  MACER 440), as in the papers.
* ``digits``: a derivation, stated explicitly in :data:`DIGITS_DERIVATION`: each recipe's values
  with the architecture, epochs, batch and learning-rate schedule replaced by digits-sized ones
  (the method's options, learning rate, momentum, weight decay and step structure are the
  recipe's).

Epochs and budgets (both stated in the output):

* ``--epochs N`` gives every method N epochs; each method's epoch-counted values (step length,
  milestones, warm-ups) are scaled by N / its recipe's epochs.
* ``--budget`` gives every method the compute of the Gaussian run: a method whose estimated cost
  per training example (``Method.cost()`` plus its weight perturbation's, in forward passes,
  checked against counted forwards in tests/test_method_cost.py) is c times Gaussian's gets
  ``round(E_gaussian / c)`` epochs (at least 1, which then exceeds the budget: flagged), with its
  epoch-counted values scaled the same way. ``--measure-cost STEPS`` replaces the estimate by the
  measured time of STEPS training steps of each method on the run's device.

Usage::

    python experiments/reproduce.py --preset digits --out runs/reproduce-digits \\
        --results experiments/results/digits_sigma0.25
    python experiments/reproduce.py --preset cifar10 --data-root DATA --out runs/c10
    python experiments/reproduce.py --preset cifar10 --data-root DATA --budget --out runs/c10-budget
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from robustmaxup.certify.bounds import certified_radius, clopper_pearson_lower
from robustmaxup.cli import main as cli
from robustmaxup.cli.train import build_parser as train_parser, config_from_args
from robustmaxup.methods import build_method
from robustmaxup.runtime.dist import resolve_device
from robustmaxup.runtime.io import atomic_write_json, atomic_write_text
from robustmaxup.runtime.records import provenance
from robustmaxup.train import RECIPES, TrainConfig, setup, train_batch
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

PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "train": DIGITS_DERIVATION,
        "certify": ["--dataset", "digits", "--n0", "100", "--n", "1000", "--alpha", "0.001",
                    "--batch", "1000", "--skip", "3"],
        "radii": ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.75"],
    },
    "cifar10": {
        "train": ["--dataset", "cifar10"],
        "certify": ["--dataset", "cifar10", "--n0", "100", "--n", "100000", "--alpha", "0.001",
                    "--batch", "1000", "--skip", "20"],
        "radii": ["0", "0.25", "0.5", "0.75", "1.0"],
    },
}

#: epoch-counted method and perturbation options, scaled with the epochs
_WARMUPS = ("warmup", "awp_warmup", "amp_warmup")


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


def _run(argv: list[str]) -> float:
    print(f"\n$ robustmaxup {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = cli(argv)
    if code != 0:
        sys.exit(code)
    return time.perf_counter() - t0


def _radius_cap_note(certify_argv: list[str], sigma: float) -> str:
    """No certificate can exceed σ·Φ⁻¹(α^(1/n)), the bound of n unanimous votes."""
    n = int(certify_argv[certify_argv.index("--n") + 1])
    alpha = float(certify_argv[certify_argv.index("--alpha") + 1])
    cap = certified_radius(clopper_pearson_lower(n, n, alpha), sigma)
    return f"largest certifiable radius at n = {n}, alpha = {alpha}: {cap:.4f}"


def plan(preset: dict[str, Any], labels: list[str], args: argparse.Namespace,
         root: list[str]) -> dict[str, dict[str, Any]]:
    """Every column's training command and the epochs/budget arithmetic behind it."""
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
            costs = {label: measured_cost([*argv, "--device", args.device], args.measure_cost)
                     for label, argv in base.items()}
            ref_cost = costs.get("gaussian") or measured_cost([*ref_argv, "--device", args.device],
                                                              args.measure_cost)
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
        row.update(epochs=epochs or cfg.epochs, flags=flags, train=["train", *argv, *flags])
        out[label] = row
    return out


def _budget_note(rows: dict[str, dict[str, Any]], source: str, ref_epochs: int) -> str:
    lines = [f"# equal-compute budget: {ref_epochs} Gaussian epochs; cost per example {source}"]
    for label, r in rows.items():
        flag = "  (at least 1 epoch: OVER budget)" if r["over_budget"] else ""
        lines.append(f"#   {label}: {r['relative_cost']:.2f}x Gaussian -> {r['epochs']} epochs "
                     f"(recipe {r['recipe']}: {r['recipe_epochs']}){flag}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train (each method's recipe), certify and tabulate every "
                                            "smoothing method.")
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
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--results", default=None, help="write PATH.md and PATH.json (table, configs, timings)")
    args = p.parse_args(argv)
    if args.measure_cost and not args.budget:
        p.error("--measure-cost needs --budget")

    preset = PRESETS[args.preset]
    root = ["--data-root", args.data_root] if args.data_root else []
    labels = args.methods or list(METHOD_RUNS)
    rows = plan(preset, labels, args, root)
    budget_note = ""
    if args.budget:
        source = (f"measured over {args.measure_cost} steps on {args.device}" if args.measure_cost
                  else "estimated by Method.cost() (forward passes per example)")
        ref_epochs = args.epochs or _config(["--recipe", "cohen", *preset["train"], "--out", "u"]).epochs
        budget_note = _budget_note(rows, source, ref_epochs)
        print(budget_note, flush=True)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    timings, tsvs, commands = {}, [], {}
    for label in labels:
        run_dir = out / label.replace(" ", "_").replace("=", "")
        train_argv = [*rows[label]["train"], "--device", args.device, "--out", str(run_dir), "--quiet"]
        tsv = out / f"{run_dir.name}.tsv"
        certify_argv = ["certify", str(run_dir / "last.pt"), *preset["certify"], *root,
                        "--device", args.device, "--out", str(tsv), "--quiet"]
        timings[label] = {"train_s": _run(train_argv), "certify_s": _run(certify_argv)}
        commands[label] = {"train": train_argv, "certify": certify_argv}
        tsvs.append(str(tsv))
    table = out / "table.md"
    _run(["analyze", *tsvs, "--radii", *preset["radii"], "--plot", str(out / "certified_accuracy.png"),
          "--out", str(table)])
    if args.results:
        info = provenance(resolve_device(args.device))
        sigma = args.sigma or "recipe (0.25)"
        epochs = ", ".join(f"{label} {rows[label]['epochs']}" for label in labels)
        header = (f"# {args.preset}, σ = {sigma}, each method's recipe"
                  f"{' (digits derivation: ' + ' '.join(DIGITS_DERIVATION) + ')' if args.preset == 'digits' else ''}"
                  f"; epochs: {epochs}\n"
                  f"# git {info['git_sha']}, {info['device']}, torch {info['torch']}\n"
                  f"# {_radius_cap_note(preset['certify'], float(args.sigma or 0.25))}\n{budget_note}")
        atomic_write_text(args.results + ".md", header + table.read_text())
        atomic_write_json(args.results + ".json", {
            "preset": args.preset, "sigma": args.sigma, "budget": args.budget, "plan": rows,
            "columns": dict(zip(labels, tsvs)), "commands": commands, "timings_s": timings, "provenance": info,
            "sidecars": {label: json.loads(Path(t + ".json").read_text()) for label, t in zip(labels, tsvs)},
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
