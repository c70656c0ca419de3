"""Training throughput: robustmaxup's step against a Cohen-style reference step, in one run.

Claim (goals on one H100, CIFAR ResNet-110, batch 256): our Gaussian-augmentation step is
>= 2.5x the reference's img/s; a MaxUp m=4 step costs <= 2.4x our Gaussian step time with peak
memory <= 1.3x (naive MaxUp, backpropagating all m copies, is ~4x time and ~m x memory); every
other registered method's cost relative to Gaussian is printed next to it.

Evidence: this script prints, for each configuration, img/s, step time relative to our Gaussian
step, and (on CUDA) peak memory relative to it, measured on the same random CIFAR-shaped data in
the same process. The reference is written out below as Cohen et al.'s train loop does it: fp32,
per-image host-side crop/flip in DataLoader workers, a host->device copy per batch, noise drawn
with ``randn_like``, and ``loss.item()`` every step. Ours is ``robustmaxup.train.train_step`` with
the device-resident loader, bf16 autocast and channels_last on CUDA. Results are written as JSON
with the config, git SHA and hardware (``--out``). ``--quick`` runs a small CPU configuration.

Usage::

    python experiments/bench_train.py                      # full (GPU)
    python experiments/bench_train.py --quick              # seconds, CPU
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset

from robustmaxup.checkpoints import build_model_for
from robustmaxup.data import ImageSplit, get_info
from robustmaxup.train import TrainConfig, setup, train_step
from robustmaxup.methods import METHODS
from robustmaxup.runtime.dist import resolve_device
from robustmaxup.runtime.io import atomic_write_json
from robustmaxup.runtime.records import provenance

log = logging.getLogger("bench_train")


def synthetic_split(n: int, seed: int = 0) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    info = get_info("cifar10")
    images = torch.randint(0, 256, (n, *info.image_shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, info.num_classes, (n,), generator=g)
    return ImageSplit(info, "train", images, labels, [str(i) for i in range(info.num_classes)], "synthetic")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(step: Callable[[], None], device: torch.device, warmup: int, steps: int, batch: int) -> dict[str, float]:
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"step_s": seconds, "img_per_s": batch / seconds, "peak_mib": peak}


# --- the reference: Cohen et al.'s loop, written out -------------------------------------------

class _HostDataset(Dataset):
    """Per-image host-side augmentation, as torchvision's CIFAR dataset + transforms does it."""

    def __init__(self, split: ImageSplit) -> None:
        self.split = split
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                                    T.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.images[i]), int(self.split.labels[i])


def reference_step_factory(split: ImageSplit, arch: str, batch: int, sigma: float, device: torch.device,
                           workers: int) -> Callable[[], None]:
    model = build_model_for(arch, "cifar10").to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(_HostDataset(split), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0)
    it = iter(loader)

    def step() -> None:
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device), y.to(device)
        x = x + torch.randn_like(x) * sigma
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the reference logs every step: a host sync per batch

    return step


# --- ours ------------------------------------------------------------------------------------

def our_step_factory(split: ImageSplit, arch: str, batch: int, method: str, method_args: dict[str, Any],
                     device: torch.device, compile: bool = False) -> Callable[[], None]:
    out = tempfile.mkdtemp(prefix="bench_train_")
    cfg = TrainConfig(dataset="cifar10", out=out, arch=arch, method=method, method_args=method_args,
                      batch=batch, device=str(device), val_size=0, max_eval=0, quiet=True,
                      compile=compile)
    run = setup(cfg, splits={"train": split, "val": None, "test": None})
    run.model.train()
    loader = run.loaders["train"]
    state = {"epoch": 0, "it": iter(loader)}

    def step() -> None:
        try:
            x, y = next(state["it"])
        except StopIteration:
            state["epoch"] += 1
            loader.set_epoch(state["epoch"])
            state["it"] = iter(loader)
            x, y = next(state["it"])
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(run, x, y)

    return step


def configurations(sigma: float, ms: list[int]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, hparams): Gaussian first (the baseline), MaxUp at each m, then the rest."""
    rows = [("gaussian", "gaussian", {"sigma": sigma})]
    rows += [(f"maxup m={m}", "maxup", {"sigma": sigma, "copies": m}) for m in ms]
    for name in METHODS.names():
        if name not in ("gaussian", "maxup"):
            rows.append((name, name, {}))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Training-step throughput vs a Cohen-style reference.")
    p.add_argument("--quick", action="store_true", help="small CPU configuration (seconds)")
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default=None, help="default: cifar_resnet110 (quick: cifar_resnet20)")
    p.add_argument("--batch", type=int, default=None, help="default 256 (quick: 16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; quick 1)")
    p.add_argument("--copies", type=int, nargs="+", default=None, help="MaxUp copies m (default 2 4 8)")
    p.add_argument("--methods", nargs="*", default=None, help="only these labels' methods (default: all)")
    p.add_argument("--workers", type=int, default=4, help="reference DataLoader workers")
    p.add_argument("--compile", action="store_true",
                   help="also time Gaussian and MaxUp m=4 with torch.compile (compile time untimed)")
    p.add_argument("--out", default=None, help="write results JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    device = resolve_device(args.device)
    arch = args.arch or ("cifar_resnet20" if args.quick else "cifar_resnet110")
    batch = args.batch or (16 if args.quick else 256)
    steps = args.steps or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    ms = args.copies or ([2, 4] if args.quick else [2, 4, 8])
    workers = min(args.workers, 2) if args.quick else args.workers
    split = synthetic_split(max(batch * (steps + warmup + 2), 2048))
    configs = configurations(0.25, ms)
    if args.methods is not None:
        configs = [c for c in configs if c[1] in args.methods or c[0] == "gaussian"]

    results: dict[str, Any] = {}
    ref = _measure(reference_step_factory(split, arch, batch, 0.25, device, workers), device, warmup, steps, batch)
    results["reference (Cohen-style gaussian)"] = ref
    for label, method, hp in configs:
        results[label] = _measure(our_step_factory(split, arch, batch, method, hp, device), device, warmup, steps, batch)
    if args.compile:
        for label, method, hp in [c for c in configs if c[0] in ("gaussian", "maxup m=4")]:
            step = our_step_factory(split, arch, batch, method, hp, device, compile=True)
            results[f"{label} (compiled)"] = _measure(step, device, warmup + 2, steps, batch)
    base = results["gaussian"]
    print(f"\n{arch}, batch {batch}, {steps} timed steps, device {provenance(device)['device']}")
    print(f"{'configuration':<34} {'img/s':>9} {'vs ref':>8} {'time/gauss':>11} {'mem/gauss':>10}")
    for label, r in results.items():
        mem = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if r["peak_mib"] and base["peak_mib"] else "n/a"
        print(f"{label:<34} {r['img_per_s']:>9.1f} {r['img_per_s'] / ref['img_per_s']:>7.2f}x "
              f"{r['step_s'] / base['step_s']:>10.2f}x {mem:>10}")
    if args.out:
        atomic_write_json(args.out, {"config": {**vars(args), "arch": arch, "batch": batch, "steps": steps},
                                     "results": results, "provenance": provenance(device)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
