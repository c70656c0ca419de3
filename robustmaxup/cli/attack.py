"""``robustmaxup attack``: empirical robust accuracy with AutoAttack (default) or our PGD.

Example::

    robustmaxup attack runs/c10/best.pt --dataset cifar10 --data-root data/cifar10 \\
        --norm Linf --eps 8/255 --n-examples 1000 --batch 500 --out aa_linf.json
    robustmaxup attack runs/c10/best.pt --dataset cifar10 --data-root data/cifar10 \\
        --norm L2 --eps 0.5 --smoothed --m 32            # soft smoothed model, version rand (EOT)
    robustmaxup attack ckpt.pt --dataset digits --attack pgd --eps 0.1 --steps 20

Outputs (all written atomically, only once the run is complete):

- ``OUT`` (JSON): clean and robust accuracy, robust accuracy after each attack (cumulative), n,
  eps, norm, version, the re-scoring statistics, timings, checkpoint hash, versions, git SHA
  and device.
- ``OUT`` with suffix ``.tsv``: one row per example, ``idx label clean_correct robust_correct``,
  then ``robust_after_<attack>`` per attack and ``rescore_correct`` (the fraction of the
  re-scorings of x_adv that classify it correctly).
- ``--save-adv FILE``: ``{"x_adv", "labels", "indices", "robust", ...}`` (torch file).
- ``OUT`` with suffix ``.autoattack.log``: pyautoattack's own log.

Robust accuracy is the POINTWISE worst case: an example counts as robust only if it survives
every attack and every re-scoring of its x_adv (never a mean over attacks). Randomized (smoothed)
models are re-scored 5 times by default and the spread is reported, because a single evaluation
of x_adv overstates their robustness.

Resuming: the examples are processed in chunks of ``--batch``; after each chunk the flags (and
x_adv with ``--save-adv``) go atomically to ``OUT.state.pt``. ``--resume`` continues from the last
finished chunk. Chunk ``c`` draws all its randomness from ``derive_seed(--seed, c)``, so a resumed
run gives exactly the results of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from robustmaxup.cli.common import (
    add_data_args, add_runtime_args, clean_accuracy, log_clean_accuracy, make_parser, resolve_sigma, run,
)
from robustmaxup.errors import UserError

log = logging.getLogger("robustmaxup")

# settings that define the results: --resume refuses a state file made with other values
RESUME_KEYS = ("checkpoint_sha256", "dataset", "split", "n", "indices", "batch", "attack_config", "seed",
               "save_adv")


# ----------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    from robustmaxup.attacks import EVALUATORS
    from robustmaxup.attacks.autoattack import AA_ATTACKS, AA_VERSIONS

    p = make_parser("attack", "Empirical robust accuracy under AutoAttack or PGD; the robust "
                              "accuracy is the pointwise worst case over attacks.")
    p.add_argument("checkpoint", help="robustmaxup or Cohen-format checkpoint")
    add_data_args(p)
    p.add_argument("--attack", default="autoattack",
                   help=f"attack to run: {', '.join(EVALUATORS.names())}")
    p.add_argument("--norm", default="Linf", help="threat model: Linf, L2 (or L1 for AutoAttack)")
    p.add_argument("--eps", required=True, help="budget in [0,1] pixel units; fractions like 8/255 work")
    p.add_argument("--version", default=None,
                   help=f"AutoAttack version: {', '.join(AA_VERSIONS)} (default: standard; rand "
                        "with --smoothed; custom with --attacks)")
    p.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                   help=f"AutoAttack custom attack list from: {', '.join(AA_ATTACKS)}")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (--attack pgd)")
    p.add_argument("--step-size", default=None,
                   help="PGD step size (--attack pgd; default 2.5*eps/steps; fractions work)")
    p.add_argument("--n-examples", type=int, default=1000,
                   help="evaluate N evenly spaced examples of the split (all if N >= its size)")
    p.add_argument("--batch", type=int, default=500,
                   help="examples per chunk (attack batch and unit of --resume)")
    p.add_argument("--smoothed", action="store_true",
                   help="attack the soft smoothed classifier (mean softmax over --m noise draws)")
    p.add_argument("--sigma", type=float, default=None,
                   help="smoothing noise level (default: the checkpoint's training sigma)")
    p.add_argument("--m", type=int, default=32, help="noise draws per forward of the smoothed model")
    p.add_argument("--rescores", type=int, default=None,
                   help="re-scorings of x_adv (default: 5 for --smoothed, else 1)")
    p.add_argument("--out", default=None,
                   help="output JSON (default: attack_<attack>_<norm>_eps<EPS>.json); the TSV goes beside it")
    p.add_argument("--save-adv", default=None, metavar="FILE", help="also save x_adv to this torch file")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last finished chunk")
    add_runtime_args(p)
    return p


@dataclass(frozen=True)
class Paths:
    json: Path
    tsv: Path
    state: Path
    aa_log: Path
    adv: Path | None

    def outputs(self) -> list[Path]:
        return [self.json, self.tsv] + ([self.adv] if self.adv else [])


def _resolve_paths(args: argparse.Namespace, eps: float) -> Paths:
    from robustmaxup.utils import ensure_writable_dir

    out = Path(args.out) if args.out else Path(f"attack_{args.attack}_{args.norm}_eps{eps:.6g}.json")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; name a .json file")
    if out.suffix == ".tsv":
        raise UserError(f"--out {out} names the TSV; name the JSON file, the TSV goes beside it")
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    adv = Path(args.save_adv) if args.save_adv else None
    if adv is not None:
        if adv.is_dir():
            raise UserError(f"--save-adv {adv} is a directory; name a file, e.g. adv.pt")
        ensure_writable_dir(adv.parent if str(adv.parent) else Path("."))
    tsv = out.with_suffix(".tsv") if out.suffix == ".json" else out.with_name(out.name + ".tsv")
    base = out.with_suffix("") if out.suffix == ".json" else out
    paths = Paths(out, tsv, out.with_name(out.name + ".state.pt"),
                  base.with_name(base.name + ".autoattack.log"), adv)
    if len({str(p.resolve()) for p in paths.outputs()}) != len(paths.outputs()):
        raise UserError("--out and --save-adv name the same file; choose different names")
    return paths


def _check_outputs(paths: Paths, resume: bool) -> bool:
    """True if a resumed run is already complete. UserError if outputs exist without --resume."""
    existing = [p for p in paths.outputs() if p.exists()]
    if not resume:
        if existing or paths.state.exists():
            first = existing[0] if existing else paths.state
            raise UserError(f"{first} already exists; pass --resume to continue or reuse the run, "
                            "or choose another --out")
        return False
    return paths.json.exists() and not paths.state.exists()


def _attack_config(args: argparse.Namespace, eps: float, sigma: float | None, image_shape):
    from robustmaxup.attacks import AttackConfig
    from robustmaxup.attacks.evaluation import check_config
    from robustmaxup.utils import parse_fraction

    if args.attack != "autoattack" and (args.version is not None or args.attacks):
        raise UserError(f"--version/--attacks apply to --attack autoattack, not {args.attack!r}")
    version = args.version or ("custom" if args.attacks else "rand" if args.smoothed else "standard")
    step_size = parse_fraction(args.step_size) if args.step_size is not None else None
    if step_size is not None and not step_size > 0:
        raise UserError(f"--step-size must be positive, got {step_size}")
    for name in ("n_examples", "batch", "m", "steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.rescores is not None and args.rescores < 1:
        raise UserError(f"--rescores must be >= 1, got {args.rescores}")
    if (args.sigma is not None or args.m != 32) and not args.smoothed:
        raise UserError("--sigma/--m only apply with --smoothed")
    config = AttackConfig(
        eps=eps, attack=args.attack, norm=args.norm, version=version,
        attacks=tuple(args.attacks) if args.attacks else None, steps=args.steps,
        step_size=step_size, batch_size=args.batch, sigma=sigma, m=args.m, rescores=args.rescores,
    )
    check_config(config, tuple(image_shape))
    return config


def _resolve_sigma(args: argparse.Namespace, meta: dict[str, Any]) -> float | None:
    if not args.smoothed:
        return None
    if args.sigma is not None and args.sigma <= 0:
        raise UserError(f"--sigma must be positive, got {args.sigma}")
    return resolve_sigma(args.sigma, meta, verb="attacking", missing_hint="pass --sigma with --smoothed")[0]


# ----------------------------------------------------------------------------- the run
@dataclass
class Run:
    args: argparse.Namespace
    config: Any
    model: torch.nn.Module
    split: Any
    n: int
    device: torch.device
    paths: Paths
    header: dict[str, Any]
    indices: torch.Tensor  # dataset index of each evaluated example (position -> index)

    @property
    def chunks(self) -> list[range]:
        b = self.args.batch
        return [range(s, min(s + b, self.n)) for s in range(0, self.n, b)]


def prepare(args: argparse.Namespace) -> Run | None:
    """Validate everything, load model and data; no output is touched. None if already done."""
    from robustmaxup.checkpoints import load_model
    from robustmaxup.data import get_info, load_split, spread_indices
    from robustmaxup.utils import parse_fraction, provenance, resolve_device, sha256_file

    eps = parse_fraction(args.eps)
    info = get_info(args.dataset)
    if args.smoothed and args.sigma is not None and args.sigma <= 0:
        raise UserError(f"--sigma must be positive, got {args.sigma}")
    _attack_config(args, eps, args.sigma or (1.0 if args.smoothed else None), info.image_shape)
    paths = _resolve_paths(args, eps)
    if _check_outputs(paths, args.resume):
        log.info("%s is already complete; nothing to do", paths.json)
        return None
    device = resolve_device(args.device)
    model, meta = load_model(args.checkpoint, dataset=args.dataset, num_classes=info.num_classes,
                             device=device)
    sigma = _resolve_sigma(args, meta)
    config = _attack_config(args, eps, sigma, info.image_shape)
    split = load_split(args.dataset, args.split, root=args.data_root, cache_dir=args.cache_dir)
    n = min(args.n_examples, len(split))
    if n < args.n_examples:
        log.info("the %s split has only %d examples; evaluating all of them", args.split, len(split))
    indices = spread_indices(len(split), n)  # evenly spaced: splits may be sorted by class
    clean_check, n_check = clean_accuracy(model, split, indices.tolist(), args.batch, device)
    log_clean_accuracy(clean_check, n_check, info.num_classes, "the model")
    header = {
        "command": "attack",
        "config": {**vars(args), "eps_value": eps},
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "checkpoint_sha256": sha256_file(args.checkpoint),
        "checkpoint_meta": meta,
        "dataset": args.dataset, "split": args.split, "split_size": len(split),
        "n": n, "indices": indices.tolist(),
        "index_rule": "n evenly spaced examples of the split (data.spread_indices); all when n >= its size",
        "batch": args.batch, "seed": args.seed, "save_adv": args.save_adv is not None,
        "attack_config": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in asdict(config).items()},
        "attack": config.attack, "eps": eps, "norm": config.norm,
        "version": config.version if config.attack == "autoattack" else None,
        "smoothed": {"sigma": sigma, "m": config.m} if config.randomized else None,
        "randomized": config.randomized,
        "rescores": config.n_rescores,
        "seed_rule": "chunk c (examples c*batch ...) uses utils.derive_seed(seed, c)",
        "clean_check": {"examples": n_check, "accuracy": clean_check},
        "provenance": provenance(device),
    }
    if config.randomized:
        log.info("randomized (smoothed) model: x_adv is re-scored %d times; an example counts as "
                 "robust only if every attack fails and every re-scoring is correct (a single "
                 "evaluation overstates robustness)", config.n_rescores)
    return Run(args, config, model, split, n, device, paths, header, indices)


def _load_state(r: Run) -> dict[str, Any]:
    fresh = {"header": {k: r.header[k] for k in RESUME_KEYS}, "chunks": {}}
    if not (r.args.resume and r.paths.state.exists()):
        return fresh
    try:
        state = torch.load(r.paths.state, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable state is the user's to remove
        raise UserError(f"cannot read {r.paths.state} ({type(e).__name__}); remove it to start over") from None
    for key in RESUME_KEYS:
        if state["header"].get(key) != r.header[key]:
            raise UserError(f"--resume: {r.paths.state} was made with different {key}; use the same "
                            "settings, or remove it to start over")
    log.info("resuming: %d of %d chunks already done", len(state["chunks"]), len(r.chunks))
    return state


def _run_chunk(r: Run, c: int, idx: range) -> dict[str, Any]:
    from robustmaxup.attacks import evaluate
    from robustmaxup.utils import derive_seed

    x, y = r.split.batch(r.indices[list(idx)].tolist())
    x, y = x.to(r.device), y.to(r.device)
    t0 = time.perf_counter()
    res = evaluate(r.model, x, y, r.config, seed=derive_seed(r.args.seed, c),
                   log_file=r.paths.aa_log if r.config.attack == "autoattack" else None)
    if r.device.type == "cuda":
        torch.cuda.synchronize(r.device)
    chunk = {
        "labels": y.cpu(), "clean": res.clean.cpu(), "robust": res.robust.cpu(),
        "stages": {k: v.cpu() for k, v in res.stages.items()},
        "rescored": res.rescored.cpu(), "seconds": time.perf_counter() - t0,
        "attack_seconds": dict(res.seconds),
    }
    if r.paths.adv is not None:
        chunk["x_adv"] = res.x_adv.cpu()
    return chunk


def _summary(r: Run, chunks: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    cat = lambda key: torch.cat([c[key] for c in chunks])  # noqa: E731
    clean, robust, rescored = cat("clean"), cat("robust"), torch.cat([c["rescored"] for c in chunks], 1)
    names = list(chunks[0]["stages"])
    after = {name: torch.cat([c["stages"][name] for c in chunks]).double().mean().item()
             for name in names}
    per_rescore = rescored.double().mean(1)
    seconds = [c["seconds"] for c in chunks]
    return {
        **r.header,
        "attacks": names,
        "clean_accuracy": clean.double().mean().item(),
        "robust_accuracy": robust.double().mean().item(),
        "clean_correct": int(clean.sum()), "robust_correct": int(robust.sum()),
        "robust_accuracy_after": after,
        "robust_accuracy_rule": "pointwise worst case: an example is robust only if it is clean-"
                                "correct, survives every attack and every re-scoring of its x_adv",
        "rescoring": {
            "repeats": int(rescored.shape[0]),
            "accuracy_mean": per_rescore.mean().item(),
            "accuracy_std": per_rescore.std().item() if rescored.shape[0] > 1 else 0.0,
            "accuracy_min": per_rescore.min().item(), "accuracy_max": per_rescore.max().item(),
            "note": ("randomized model: each re-scoring draws fresh noise; a single evaluation of "
                     "x_adv overstates robustness") if r.config.randomized else
                    "deterministic model: re-scoring x_adv reproduces the attack's verdict",
        },
        "timings": {"attack_seconds": sum(seconds), "wall_seconds_this_session": wall,
                    "seconds_per_chunk": seconds,
                    "seconds_per_attack": {n: sum(c["attack_seconds"].get(n, 0.0) for c in chunks)
                                           for n in names},
                    "images_per_second": r.n / max(sum(seconds), 1e-9)},
        "outputs": {"tsv": str(r.paths.tsv), "adv": str(r.paths.adv) if r.paths.adv else None,
                    "autoattack_log": str(r.paths.aa_log) if r.config.attack == "autoattack" else None},
    }


def _tsv(chunks: list[dict[str, Any]], indices: torch.Tensor) -> str:
    names = list(chunks[0]["stages"])
    cols = ["idx", "label", "clean_correct", "robust_correct"] + [f"robust_after_{n}" for n in names]
    lines = ["\t".join(cols + ["rescore_correct"])]
    i = 0
    for c in chunks:
        frac = c["rescored"].float().mean(0)
        for j in range(len(c["labels"])):
            row = [int(indices[i]), int(c["labels"][j]), int(c["clean"][j]), int(c["robust"][j])]
            row += [int(c["stages"][n][j]) for n in names]
            lines.append("\t".join(map(str, row)) + f"\t{frac[j].item():.4f}")
            i += 1
    return "\n".join(lines) + "\n"


def _write_outputs(r: Run, chunks: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from robustmaxup.utils import atomic_torch_save, atomic_write_json, atomic_write_text

    atomic_write_text(r.paths.tsv, _tsv(chunks, r.indices))
    if r.paths.adv is not None:
        atomic_torch_save({
            "x_adv": torch.cat([c["x_adv"] for c in chunks]),
            "labels": torch.cat([c["labels"] for c in chunks]),
            "robust": torch.cat([c["robust"] for c in chunks]),
            "indices": r.indices.clone(), "eps": summary["eps"], "norm": summary["norm"],
            "attack_config": summary["attack_config"], "dataset": summary["dataset"],
            "split": summary["split"],
        }, r.paths.adv)
    atomic_write_json(r.paths.json, summary)


def execute(r: Run) -> dict[str, Any]:
    from tqdm import tqdm

    from robustmaxup.utils import atomic_torch_save

    state = _load_state(r)
    done = state["chunks"]
    t0 = time.perf_counter()
    bar = tqdm(total=r.n, desc=f"attack {r.config.attack}", unit="img", disable=r.args.quiet,
               initial=sum(len(rg) for c, rg in enumerate(r.chunks) if c in done))
    with bar:
        for c, idx in enumerate(r.chunks):
            if c in done:
                continue
            done[c] = _run_chunk(r, c, idx)
            atomic_torch_save(state, r.paths.state)
            bar.set_postfix(robust=f"{torch.cat([d['robust'] for d in done.values()]).float().mean():.3f}",
                            refresh=False)
            bar.update(len(idx))
    chunks = [done[c] for c in range(len(r.chunks))]
    summary = _summary(r, chunks, time.perf_counter() - t0)
    _write_outputs(r, chunks, summary)
    r.paths.state.unlink(missing_ok=True)
    after = ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary["robust_accuracy_after"].items())
    log.info("n=%d  clean accuracy %.1f%%  robust accuracy %.1f%% (%s %s eps=%.6g; after: %s)",
             r.n, 100 * summary["clean_accuracy"], 100 * summary["robust_accuracy"],
             r.config.attack, r.config.norm, r.config.eps, after)
    if r.config.randomized:
        rs = summary["rescoring"]
        log.info("re-scoring x_adv %d times: accuracy %.1f%% +- %.1f%% (min %.1f%%, max %.1f%%)",
                 rs["repeats"], 100 * rs["accuracy_mean"], 100 * rs["accuracy_std"],
                 100 * rs["accuracy_min"], 100 * rs["accuracy_max"])
    log.info("wrote %s and %s", r.paths.json, r.paths.tsv)
    return summary


def _body(args: argparse.Namespace) -> None:
    r = prepare(args)
    if r is not None:
        execute(r)


def main(argv: Sequence[str] | None = None) -> int:
    return run("attack", _body, build_parser(), argv)
