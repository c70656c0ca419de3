"""What ``robustmaxup certify`` and ``robustmaxup predict`` share: flags, validation (everything,
including a trial forward, before any output file is touched), per-image seeded generators,
resumable TSV output, torchrun sharding and the JSON sidecar.

Default ``--out``: ``<command>_<split>_sigma<S>.tsv`` in the current directory (e.g.
``certify_test_sigma0.25.tsv``); an existing file is never overwritten (use ``--resume``).

Output format (Cohen et al.'s, so existing analysis scripts read it): a header line, then one row
per image, flushed per row. ``radius`` has 6 decimals; ``time`` is the wall time spent on that
image as ``H:MM:SS.mmm`` (with ``--images-per-batch K`` the time of the K-image group divided
by K). ``FILE.tsv.json`` (written atomically) records the settings, the selected indices, the
checkpoint's hash and metadata, versions and hardware, and whether the run is complete.

Reproducibility: image ``idx`` draws its noise only from a generator seeded with
``derive_seed(--seed, idx)``, so reruns, ``--resume`` and sharded runs give identical rows (time
aside), and any row can be recomputed alone with ``Smooth.certify``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from robustmaxup.certify import bounds
from robustmaxup.certify.smooth import PRECISIONS, Smooth
from robustmaxup.cli.common import (
    add_data_args, add_runtime_args, check_range, clean_accuracy, log_clean_accuracy, resolve_sigma,
)
from robustmaxup.errors import UserError
from robustmaxup.utils import (
    atomic_write_json, derive_seed, ensure_writable_dir, make_generator, provenance, resolve_device,
    sha256_file,
)

log = logging.getLogger("robustmaxup")

ETA_AFTER_IMAGES = 5
# result-defining settings: --resume refuses to continue a file made with other values
RESUME_KEYS = ("checkpoint_sha256", "dataset", "split", "sigma", "n0", "n", "alpha", "seed",
               "noise_chunk", "precision", "indices")


# ----------------------------------------------------------------------------- flags
def add_smoothing_args(p: argparse.ArgumentParser, *, with_n0: bool) -> None:
    p.add_argument("checkpoint", help="robustmaxup or Cohen-format checkpoint (.pt/.pth.tar)")
    add_data_args(p)
    p.add_argument("--sigma", type=float, default=None,
                   help="noise level in [0,1] pixel units (default: the checkpoint's training sigma)")
    if with_n0:
        p.add_argument("--n0", type=int, default=100, help="samples to select the top class")
    p.add_argument("--n", type=int, default=100_000, help="samples to estimate/test the top class")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    p.add_argument("--skip", type=int, default=1, help="use dataset indices 0, skip, 2*skip, ...")
    p.add_argument("--max", type=int, default=-1, help="at most this many images (-1: all)")
    p.add_argument("--out", default=None,
                   help="output TSV (default: <command>_<split>_sigma<S>.tsv in the current directory)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted output file from its last complete row")
    p.add_argument("--images-per-batch", type=int, default=1,
                   help="images whose noise shares one forward pass (same results for any value)")
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    add_runtime_args(p)


def validate_numbers(args: argparse.Namespace) -> None:
    """UserError for any out-of-range number (before anything is loaded)."""
    if args.sigma is not None:
        check_range("sigma", args.sigma, 0, None, lo_open=True)
    check_range("alpha", args.alpha, 0, 1, lo_open=True, hi_open=True)
    if getattr(args, "n0", 1) < 1:
        raise UserError(f"--n0 must be >= 1, got {args.n0}")
    for name in ("n", "batch", "skip", "images_per_batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max == 0 or args.max < -1:
        raise UserError(f"--max must be -1 (all) or >= 1, got {args.max}")


def select_indices(size: int, skip: int, max_images: int) -> list[int]:
    """``range(0, size, skip)[:max]`` (``max = -1``: all)."""
    idx = list(range(0, size, skip))
    return idx if max_images == -1 else idx[:max_images]


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Shard:
    """This process's place in a torchrun launch (``world = 1`` when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Shard":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, spec: str) -> torch.device:
        device = resolve_device(spec)
        if self.world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return device

    def init(self, device: torch.device) -> None:
        """Join the process group. A barrier is all we need, so gloo (CPU) serves on GPUs too, with
        a long timeout: shards may finish hours apart, beyond NCCL's watchdog."""
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


# ----------------------------------------------------------------------------- TSV files
def format_time(seconds: float) -> str:
    """``H:MM:SS.mmm`` like Cohen et al.'s ``str(timedelta)``, to the millisecond."""
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h}:{m:02d}:{s:02d}.{ms:03d}"


def read_rows(path: Path, header: str) -> tuple[dict[int, str], int]:
    """Complete rows of a TSV by idx, and the byte length of the complete part.

    A torn last line (no newline, from a kill mid-write) is not counted; UserError if the header
    is not ``header`` or a complete row is malformed.
    """
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode().splitlines()
    if not lines:
        return {}, 0
    if lines[0] != header:
        raise UserError(f"{path} does not start with the header {header!r}; it is not an output of "
                        "this command, choose another --out")
    rows: dict[int, str] = {}
    ncols = header.count("\t") + 1
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != ncols or not fields[0].lstrip("-").isdigit():
            raise UserError(f"{path} has a malformed row {line[:60]!r}; remove it and rerun with --resume")
        rows[int(fields[0])] = line
    return rows, end


# ----------------------------------------------------------------------------- the run
@dataclass
class Mode:
    """What differs between certify and predict."""

    command: str
    header: str
    # (smooth, xs [k,C,H,W], labels, idxs, generators, args) -> rows without the time column
    run_group: Callable[..., list[str]]
    # (smooth, n, alpha) -> None: warn before the run if n can never give an answer
    warn_too_few: Callable[[Smooth, int, float], None]


@dataclass
class Context:
    args: argparse.Namespace
    mode: Mode
    shard: Shard
    device: torch.device
    smooth: Smooth
    split: Any
    indices: list[int]
    out: Path
    sidecar: dict[str, Any] = field(default_factory=dict)


def _resolve_out(args: argparse.Namespace, mode: Mode, sigma: float, shard: Shard) -> Path:
    out = Path(args.out) if args.out else Path(f"{mode.command}_{args.split}_sigma{sigma:g}.tsv")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; name a .tsv file")
    _check_writable(out.parent)
    if not args.resume:
        for path in [out] + ([_part(out, shard.rank)] if shard.world > 1 else []):
            if path.exists():
                raise UserError(f"{path} already exists; pass --resume to continue it, or choose another --out")
    return out


def _check_writable(folder: Path) -> None:
    """UserError unless ``folder`` exists writable, or could be created (nothing is created here)."""
    probe = folder.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot create the output directory {folder}: {probe} is a file; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output directory {probe} is not writable; choose another --out")


def _part(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.rank{rank}")


def _trial_forward(smooth: Smooth, split: Any, indices: list[int], device: torch.device,
                   generator: torch.Generator) -> None:
    """Forward one clean and a few noisy copies of the first image; turn failures into UserErrors."""
    x, _ = split[indices[0]]
    x = x.to(device)
    try:
        with torch.inference_mode():
            logits = smooth.logits(x[None], compiled=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"the model does not accept {split.info.name} images of shape {tuple(x.shape)}: "
                        f"{first}; check --dataset and the checkpoint") from None
    if logits.dim() != 2 or logits.shape[1] != smooth.num_classes:
        raise UserError(f"the model returns logits of shape {tuple(logits.shape)}, expected "
                        f"[1, {smooth.num_classes}]; check --dataset and the checkpoint")
    noisy = x[None] + smooth.sigma * torch.randn((8, *x.shape), generator=generator, device=device, dtype=x.dtype)
    with torch.inference_mode():
        logits = torch.cat([logits, smooth.logits(noisy, compiled=False)])
    if not torch.isfinite(logits.float()).all():
        raise UserError("the model returns non-finite logits (NaN/inf) on a trial batch; the checkpoint "
                        "is broken, or try --precision fp32")


@torch.inference_mode()
def prepare(args: argparse.Namespace, mode: Mode) -> Context:
    """Validate every input, load model and data, trial-forward; no output file is touched."""
    from robustmaxup.checkpoints import load_model
    from robustmaxup.data import get_info, load_split

    validate_numbers(args)
    shard = Shard.from_env()
    device = shard.device(args.device)
    info = get_info(args.dataset)
    model, meta = load_model(args.checkpoint, dataset=args.dataset, num_classes=info.num_classes, device=device)
    sigma, sigma_source = resolve_sigma(args.sigma, meta, verb="certifying",
                                        missing_hint="pass --sigma (e.g. --sigma 0.25)")
    out = _resolve_out(args, mode, sigma, shard)
    split = load_split(args.dataset, args.split, root=args.data_root, cache_dir=args.cache_dir)
    indices = select_indices(len(split), args.skip, args.max)
    if not indices:
        raise UserError(f"no images selected from the {len(split)}-image {args.split} split; check --skip/--max")
    smooth = Smooth(model, info.num_classes, sigma, precision=args.precision, compile=args.compile)
    _trial_forward(smooth, split, indices, device, make_generator(args.seed, device))
    acc, n_check = clean_accuracy(lambda b: smooth.logits(b, compiled=False), split, indices, args.batch, device)
    if shard.rank == 0:
        log_clean_accuracy(acc, n_check, info.num_classes, "the base classifier")
    mode.warn_too_few(smooth, args.n, args.alpha)
    ckpt_path = Path(args.checkpoint)
    sidecar = {
        "command": mode.command,
        "config": {k: v for k, v in vars(args).items()},
        "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "checkpoint_meta": meta,
        "dataset": args.dataset, "split": args.split, "split_size": len(split),
        "skip": args.skip, "max": args.max, "indices": indices, "num_selected": len(indices),
        "full_split": len(indices) == len(split),
        "sigma": sigma, "sigma_source": sigma_source, "n0": getattr(args, "n0", None), "n": args.n,
        "alpha": args.alpha, "seed": args.seed, "noise_chunk": smooth.noise_chunk,
        "precision": args.precision, "autocast": str(smooth.autocast_dtype(device)),
        "noise_seed_rule": "utils.derive_seed(seed, idx) -> utils.make_generator(., device)",
        "clean_accuracy": {"images": n_check, "accuracy": acc},
        "world_size": shard.world,
        "columns": mode.header.split("\t"),
        "time_column": "wall time per image, H:MM:SS.mmm",
        "radius_threshold": "certified at r means radius >= r",
        "provenance": provenance(device),
    }
    ctx = Context(args, mode, shard, device, smooth, split, indices, out, sidecar)
    _check_resume_settings(ctx)
    return ctx


def _check_resume_settings(ctx: Context) -> None:
    path = Path(str(ctx.out) + ".json")
    if not (ctx.args.resume and path.is_file()):
        return
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    for key in RESUME_KEYS:
        if key in old and old[key] != ctx.sidecar[key]:
            shown = "the image selection" if key == "indices" else f"{key} ({old[key]} vs {ctx.sidecar[key]})"
            raise UserError(f"--resume: {ctx.out} was made with different {shown}; "
                            "use the same settings or another --out")


def _open_output(ctx: Context) -> tuple[Any, set[int]]:
    """Open this process's TSV for appending (truncating a torn last line); return done indices."""
    header = ctx.mode.header
    done: set[int] = set()
    if ctx.out.exists():  # rows merged by an earlier sharded run, or a plain run's own file
        done |= set(read_rows(ctx.out, header)[0])
    path = ctx.out if ctx.shard.world == 1 else _part(ctx.out, ctx.shard.rank)
    if path.exists():
        rows, end = read_rows(path, header)
        done |= set(rows)
        os.truncate(path, end)
        f = open(path, "a")
        if end == 0:
            f.write(header + "\n")
    else:
        f = open(path, "w")
        f.write(header + "\n")
    f.flush()
    return f, done


def _merge(ctx: Context) -> int:
    """Rank 0: merge the final file's rows and every part file, sorted by idx; remove the parts."""
    header = ctx.mode.header
    rows: dict[int, str] = {}
    if ctx.out.exists():
        rows.update(read_rows(ctx.out, header)[0])
    parts = [_part(ctx.out, r) for r in range(ctx.shard.world)]
    for part in parts:
        if part.exists():
            rows.update(read_rows(part, header)[0])
    from robustmaxup.utils import atomic_write_text

    atomic_write_text(ctx.out, header + "\n" + "".join(rows[i] + "\n" for i in sorted(rows)))
    for part in parts:
        part.unlink(missing_ok=True)
    return len(rows)


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=disable, dynamic_ncols=True, smoothing=0.1)


def execute(ctx: Context) -> None:
    """Run the selected (and not yet done) images of this shard, writing one row per image."""
    args, shard = ctx.args, ctx.shard
    shard.init(ctx.device)
    ensure_writable_dir(ctx.out.parent)
    if shard.rank == 0:
        atomic_write_json(str(ctx.out) + ".json", {**ctx.sidecar, "complete": False})
    mine = ctx.indices[shard.rank::shard.world]
    t_start = time.perf_counter()
    f, done = _open_output(ctx)
    todo = [i for i in mine if i not in done]
    if len(todo) < len(mine):
        log.info("resuming: %d of this process's %d images already done", len(mine) - len(todo), len(mine))
    quiet = args.quiet or shard.rank != 0
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with _progress(len(todo), quiet) as bar, logging_redirect_tqdm():
            eta_logged = False
            per_image_times: list[float] = []
            k = args.images_per_batch
            for start in range(0, len(todo), k):
                group = todo[start:start + k]
                t0 = time.perf_counter()
                xs, ys = ctx.split.batch(group)
                xs = xs.to(ctx.device, non_blocking=True)
                gens = [make_generator(derive_seed(args.seed, i), ctx.device) for i in group]
                rows = ctx.mode.run_group(ctx.smooth, xs, ys.tolist(), group, gens, args)
                per_image = (time.perf_counter() - t0) / len(group)
                f.write("".join(f"{row}\t{format_time(per_image)}\n" for row in rows))
                f.flush()
                bar.update(len(group))
                per_image_times.append(per_image)
                left = len(todo) - start - len(group)
                if not eta_logged and not quiet and left and start + len(group) >= ETA_AFTER_IMAGES:
                    typical = float(sorted(per_image_times)[len(per_image_times) // 2])  # skips warm-up
                    log.info("%.3f s/image; ETA for the remaining %d images: %s",
                             typical, left, format_time(typical * left))
                    eta_logged = True
    finally:
        f.close()
    shard.barrier()
    if shard.rank == 0:
        count = _merge(ctx) if shard.world > 1 else len(read_rows(ctx.out, ctx.mode.header)[0])
        elapsed = time.perf_counter() - t_start
        atomic_write_json(str(ctx.out) + ".json", {
            **ctx.sidecar, "complete": count == len(ctx.indices), "rows": count,
            "total_time_s": elapsed,
        })
        log.info("wrote %s (%d rows) in %s", ctx.out, count, format_time(elapsed))
    shard.barrier()
    shard.close()


def run_smoothing(args: argparse.Namespace, mode: Mode) -> None:
    """Body of ``robustmaxup certify`` / ``predict``."""
    execute(prepare(args, mode))


# ----------------------------------------------------------------------------- the two modes
def certify_rows(smooth: Smooth, xs: torch.Tensor, labels: Sequence[int], idxs: Sequence[int],
                 gens: Sequence[torch.Generator], args: argparse.Namespace) -> list[str]:
    certs = smooth.certify_batch(xs, args.n0, args.n, args.alpha, args.batch, gens)
    return [f"{i}\t{y}\t{c.prediction}\t{c.radius:.6f}\t{int(c.prediction == y)}"
            for i, y, c in zip(idxs, labels, certs)]


def predict_rows(smooth: Smooth, xs: torch.Tensor, labels: Sequence[int], idxs: Sequence[int],
                 gens: Sequence[torch.Generator], args: argparse.Namespace) -> list[str]:
    preds = smooth.predict_batch(xs, args.n, args.alpha, args.batch, gens)
    return [f"{i}\t{y}\t{p}\t{int(p == y)}" for i, y, p in zip(idxs, labels, preds)]


def _warn_certify(smooth: Smooth, n: int, alpha: float) -> None:
    smooth.warn_if_too_few(n, alpha)


def _warn_predict(smooth: Smooth, n: int, alpha: float) -> None:
    need = bounds.min_samples_to_predict(alpha)
    if n < need:
        log.warning("warning: n=%d samples can never pass PREDICT's test at alpha=%g (unanimous votes give "
                    "p = %.3g); every image will abstain, use n >= %d", n, alpha, 2 * 0.5 ** n, need)


CERTIFY = Mode("certify", "idx\tlabel\tpredict\tradius\tcorrect\ttime", certify_rows, _warn_certify)
PREDICT = Mode("predict", "idx\tlabel\tpredict\tcorrect\ttime", predict_rows, _warn_predict)

__all__ = ["CERTIFY", "PREDICT", "Mode", "add_smoothing_args", "run_smoothing", "select_indices",
           "format_time", "read_rows"]
