"""Training throughput: robustmaxup's step against a Cohen-style reference step, in one run.

Claim (goals on one H100, CIFAR ResNet-110, batch 256): our Gaussian-augmentation step is
>= 2.5x the reference's img/s; a MaxUp m=4 step costs <= 2.4x our Gaussian step time with peak
memory <= 1.3x (naive MaxUp, backpropagating all m copies, is ~4x time and ~m x memory); every
other registered method's cost relative to Gaussian is printed next to it.

Evidence: this script prints, for each configuration, img/s, step time relative to our Gaussian
step, and (on CUDA) peak memory relative to it, measured on the same random CIFAR-shaped data in
the same process. Every step function is built and warmed up first, one at a time, each one's
peak memory measured then, over two steady-state steps after its warm-up (allocated bytes above
what was allocated before it was built: its model, optimizer, data and the step's activations,
not cuDNN's autotuning scratch); then they are timed in ``--rounds``
alternating rounds of ``--steps`` steps, each round starting at the next configuration, and the
median round is reported, so clock ramp-up and drift fall on every configuration alike. Compiled
configurations are compared with compiled Gaussian. The reference's DataLoader workers keep
prefetching while the others are timed, which can only favour the reference. The reference is written out below as Cohen et al.'s train loop does it: fp32,
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
import contextlib
import logging
import statistics
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


#: steps after the warm-up whose peak memory is measured (CUDA): the steady state, without the
#: scratch space cuDNN's autotuning borrows the first time it meets a shape (which would fall on
#: whichever configuration meets a shape first, and so flatter the ones built after it)
MEMORY_STEPS = 2


def _build(factory: Callable[[], Callable[[], None]], device: torch.device, warmup: int) -> tuple[Callable[[], None], float | None]:
    """The step ``factory`` makes, warmed up, and its peak memory in MiB (CUDA only): the most
    allocated during :data:`MEMORY_STEPS` steady-state steps, above what was allocated before it
    was built (so its model, optimizer, data and activations count; autotuning scratch does not)."""
    cuda = device.type == "cuda"
    _sync(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    step = factory()
    for _ in range(warmup):
        step()
    if not cuda:
        return step, None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(MEMORY_STEPS):
        step()
    _sync(device)
    return step, (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _time(step: Callable[[], None], device: torch.device, steps: int) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


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
                     device: torch.device, stack: contextlib.ExitStack, compile: bool = False) -> Callable[[], None]:
    out = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_train_"))
    cfg = TrainConfig(dataset="cifar10", out=out, arch=arch, method=method, method_args=method_args,
                      batch=batch, device=str(device), val_size=0, max_eval=0, quiet=True,
                      compile=compile)
    run = stack.enter_context(setup(cfg, splits={"train": split, "val": None, "test": None}))
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
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5; quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating timed rounds (default 5; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; quick 1)")
    p.add_argument("--copies", type=int, nargs="+", default=None, help="MaxUp copies m (default 2 4 8)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="only these methods (registry names, e.g. maxup smoothadv; gaussian always runs)")
    p.add_argument("--workers", type=int, default=4, help="reference DataLoader workers")
    p.add_argument("--compile", action="store_true",
                   help="also time Gaussian and MaxUp m=4 with torch.compile (compile time untimed)")
    p.add_argument("--out", default=None, help="write results JSON here (after the builds and each round)")
    args = p.parse_args(argv)
    unknown = [m for m in args.methods or () if m not in METHODS]
    if unknown:  # before any build: a typo must not silently drop the row it asked for
        p.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS.names())}")
    logging.basicConfig(level=logging.WARNING)
    with contextlib.ExitStack() as stack:
        _bench(args, stack)
    return 0


def _bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    t_all = time.perf_counter()
    device = resolve_device(args.device)
    if device.type == "cuda":  # from the start, for every side alike (our setup() turns it on too)
        torch.backends.cudnn.benchmark = True
    arch = args.arch or ("cifar_resnet20" if args.quick else "cifar_resnet110")
    batch = args.batch or (16 if args.quick else 256)
    steps = args.steps or (1 if args.quick else 5)
    rounds = args.rounds or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    ms = args.copies or ([2, 4] if args.quick else [2, 4, 8])
    workers = min(args.workers, 2) if args.quick else args.workers
    if workers != args.workers:
        log.warning("--quick: reference DataLoader workers capped at %d (asked %d)", workers, args.workers)
    split = synthetic_split(max(batch * (steps * rounds + warmup + 2), 2048))
    configs = configurations(0.25, ms)
    if args.methods is not None:
        configs = [c for c in configs if c[1] in args.methods or c[0] == "gaussian"]
    factories: dict[str, Callable[[], Callable[[], None]]] = {
        REFERENCE: lambda: reference_step_factory(split, arch, batch, 0.25, device, workers)}
    for label, method, hp in configs:
        factories[label] = (lambda m=method, h=hp: our_step_factory(split, arch, batch, m, h, device, stack))
    if args.compile:
        for label, method, hp in [c for c in configs if c[0] in ("gaussian", "maxup m=4")]:
            factories[f"{label} (compiled)"] = (
                lambda m=method, h=hp: our_step_factory(split, arch, batch, m, h, device, stack, compile=True))
    config = {**vars(args), "arch": arch, "batch": batch, "steps": steps, "rounds": rounds, "warmup": warmup,
              "copies": ms, "workers": workers, "cudnn_benchmark": torch.backends.cudnn.benchmark}
    results: dict[str, dict[str, Any]] = {}
    built: dict[str, Callable[[], None]] = {}
    for label, factory in factories.items():  # one at a time: each one's memory is its own
        built[label], peak = _build(factory, device, warmup + (2 if "(compiled)" in label else 0))
        results[label] = {"peak_mib": peak, "round_step_s": []}
    _write(args.out, config, results, device, complete=False)
    labels = list(built)
    for r in range(rounds):  # alternating, each round starting one configuration later
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            results[label]["round_step_s"].append(_time(built[label], device, steps))
        for label in labels:
            step_s = statistics.median(results[label]["round_step_s"])
            results[label].update(step_s=step_s, img_per_s=batch / step_s)
        for label in labels:  # the ratios the README quotes, stored with the times they come from
            base = results[_baseline(label)]
            results[label].update(speedup_vs_reference=results[REFERENCE]["step_s"] / results[label]["step_s"],
                                  time_vs_baseline=results[label]["step_s"] / base["step_s"],
                                  memory_vs_baseline=results[label]["peak_mib"] / base["peak_mib"]
                                  if results[label]["peak_mib"] and base["peak_mib"] else None)
        config["wall_s"] = time.perf_counter() - t_all
        _write(args.out, config, results, device, complete=r == rounds - 1)
    _report(results, arch, batch, steps, rounds, device)


REFERENCE = "reference (Cohen-style gaussian)"


def _baseline(label: str) -> str:
    """What a configuration's time and memory are relative to: compiled Gaussian for compiled
    rows, our eager Gaussian for the rest."""
    return "gaussian (compiled)" if label.endswith("(compiled)") else "gaussian"


def _report(results: dict[str, dict[str, Any]], arch: str, batch: int, steps: int, rounds: int,
            device: torch.device) -> None:
    ref = results[REFERENCE]
    print(f"\n{arch}, batch {batch}, median of {rounds} rounds of {steps} steps, device "
          f"{provenance(device)['device']}")
    print(f"{'configuration':<34} {'img/s':>9} {'vs ref':>8} {'time/gauss':>11} {'mem/gauss':>10}")
    for label, r in results.items():
        base = results[_baseline(label)]
        mem = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if r["peak_mib"] and base["peak_mib"] else "n/a"
        print(f"{label:<34} {r['img_per_s']:>9.1f} {r['img_per_s'] / ref['img_per_s']:>7.2f}x "
              f"{r['step_s'] / base['step_s']:>10.2f}x {mem:>10}")


def _write(out: str | None, config: dict, results: dict, device: torch.device, *, complete: bool) -> None:
    if out:
        atomic_write_json(out, {"config": config, "results": results, "complete": complete,
                                "baselines": {label: _baseline(label) for label in results},
                                "provenance": provenance(device)})


if __name__ == "__main__":
    sys.exit(main())
