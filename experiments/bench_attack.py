"""Benchmark: robustmaxup's PGD-L∞ against a torchattacks-style loop, and AutoAttack's cost.

Claim: ``robustmaxup.attacks.pgd`` (gradients w.r.t. the input only via ``torch.autograd.grad``,
parameters frozen by ``model_state``, no host synchronisation inside the loop) produces exactly
the adversarial examples of a torchattacks-style reference loop from the same start (same fp32
arithmetic), and costs no more. The headline ratio is against the torchattacks loop as written
(``torchattacks/attacks/pgd.py``: no host sync inside the loop); a second reference that also
reads the loss with ``.item()`` every step, as progress-reporting or early-stopping loops do,
is timed too and reported separately. On a CPU, where a host sync is free, both ratios are 1
within timing noise; on a GPU the per-step sync drains the launch queue, which shows for small
batches/models. The statement for GPUs is untested until this script is run on one. It also measures what AutoAttack (standard version, through our adapter)
costs per 1,000 images on the present device, extrapolated linearly from a subset.

Evidence: run it; it prints images/s of both loops, their ratio, the largest difference
between their x_adv, and AutoAttack's seconds per 1,000 images (and per attack), and writes a
JSON with the configuration, git SHA and hardware. ``--quick`` is a small CPU run (< 1 min).

Caveat on AutoAttack's time: attacks after the first only run on the examples still robust, so
the time depends on the model's robustness. The model here is untrained and attacked at its own
predictions (clean accuracy 100%); a robust model costs more (up to the sum of all four attacks
on every example). The per-attack seconds are reported to make this visible.

Example::

    python experiments/bench_attack.py --quick
    python experiments/bench_attack.py --device cuda --arch preact_resnet18 --batch 512 --aa-images 100
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from robustmaxup.attacks import pgd, run_autoattack
from robustmaxup.checkpoints import build_model_for
from robustmaxup.runtime.dist import resolve_device
from robustmaxup.runtime.io import atomic_write_json
from robustmaxup.runtime.records import provenance

log = logging.getLogger("bench_attack")


def reference_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, alpha: float,
                  steps: int, delta0: torch.Tensor, host_sync: bool = False) -> tuple[torch.Tensor, list[float]]:
    """A torchattacks-style L∞ PGD loop: eval mode, parameters left requiring grad; with
    ``host_sync`` the loss is also read on the host (``.item()``) and checked every step.
    Written here for comparison only."""
    model.eval()
    x = x.clone().detach()
    adv = (x + delta0).clamp(0, 1).detach()
    losses = []
    for _ in range(steps):
        adv.requires_grad = True
        cost = nn.functional.cross_entropy(model(adv), y, reduction="sum")
        if host_sync:
            value = cost.item()  # host sync, as loops that report or early-stop on the loss do
            if value != value:
                raise FloatingPointError("NaN loss")
            losses.append(value)
        grad = torch.autograd.grad(cost, adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        adv = torch.clamp(x + delta, min=0, max=1).detach()
    return adv, losses


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
              repeats: int, device: torch.device) -> dict:
    alpha = 2.5 * eps / steps
    g = torch.Generator(device=device).manual_seed(0)
    delta0 = (2 * torch.rand(x.shape, generator=g, device=device) - 1) * eps
    ours = lambda: pgd(model, x, y, eps=eps, steps=steps, step_size=alpha, delta_init=delta0)  # noqa: E731
    ref = lambda: reference_pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, delta0=delta0)[0]  # noqa: E731
    ref_sync = lambda: reference_pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, delta0=delta0,  # noqa: E731
                                     host_sync=True)[0]
    diff = max((ours() - ref()).abs().max().item(), (ours() - ref_sync()).abs().max().item())  # + warm-up
    t_ours, t_ref, t_sync = [], [], []
    for _ in range(repeats):  # interleaved, so drifting load affects all alike
        t_ours.append(_time(ours, device))
        t_ref.append(_time(ref, device))
        t_sync.append(_time(ref_sync, device))
    n = len(x)
    ours_ips, ref_ips, sync_ips = (n / statistics.median(t) for t in (t_ours, t_ref, t_sync))
    return {"images_per_s_ours": ours_ips, "images_per_s_reference": ref_ips,
            "speedup_ours_over_reference": ours_ips / ref_ips,
            "images_per_s_reference_host_sync": sync_ips,
            "speedup_ours_over_reference_host_sync": ours_ips / sync_ips,
            "seconds_ours": t_ours, "seconds_reference": t_ref, "seconds_reference_host_sync": t_sync,
            "max_abs_diff_x_adv": diff, "step_size": alpha}


def bench_autoattack(model: nn.Module, x: torch.Tensor, *, eps: float, batch: int) -> dict:
    with torch.no_grad():
        y = model(x).argmax(1)  # attack the model's own predictions: every example starts robust
    _sync(x.device)  # the prediction above is not timed
    start = time.perf_counter()
    res = run_autoattack(model, x, y, eps=eps, version="standard", batch_size=batch, seed=0)
    _sync(x.device)
    seconds = time.perf_counter() - start
    return {"images": len(x), "seconds": seconds, "seconds_per_1000_images": seconds * 1000 / len(x),
            "seconds_per_attack": res.seconds,
            "robust_accuracy_after": {k: v.float().mean().item() for k, v in res.stages.items()},
            "note": "extrapolated linearly; later attacks run only on still-robust examples"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small CPU run (< 1 min): device cpu, batch 32, 4 AutoAttack images, unless given")
    p.add_argument("--device", default=None, help="default auto (--quick: cpu)")
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--batch", type=int, default=None, help="images per PGD call (default 256; --quick: 32)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--aa-images", type=int, default=None, help="subset for the AutoAttack timing (default 100; "
                                                               "--quick: 4; 0: skip AutoAttack)")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, full, quick in (("device", "auto", "cpu"), ("batch", 256, 32), ("aa_images", 100, 4)):
        if getattr(args, name) is None:  # --quick changes defaults, never a value given
            setattr(args, name, quick if args.quick else full)
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model_for(args.arch, "cifar10", num_classes=10).to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    result = {
        "config": {**vars(args), "dtype": "float32", "norm": "Linf",
                   "input": "uniform random CIFAR-shaped images (throughput does not depend on content)"},
        "pgd": bench_pgd(model, x, y, eps=args.eps, steps=args.steps, repeats=args.repeats,
                         device=device),
        "provenance": provenance(device),
        "torch_threads": torch.get_num_threads(),
        "complete": False,
    }
    _save(args.out, result)  # the PGD timings are kept even if AutoAttack fails below
    if args.aa_images > 0:
        result["autoattack_standard"] = bench_autoattack(model, x[:args.aa_images], eps=args.eps,
                                                         batch=min(args.batch, 500))
    result.update(complete=True, wall_s=time.perf_counter() - t0)
    r = result["pgd"]
    log.info("device: %s (%d threads)", result["provenance"]["device"], torch.get_num_threads())
    log.info("PGD-Linf %d steps, %s, batch %d: ours %.1f img/s, torchattacks-style reference %.1f img/s, "
             "ratio %.2fx (%.2fx against the loop with a per-step .item()), max |x_adv diff| %.2e",
             args.steps, args.arch, args.batch, r["images_per_s_ours"], r["images_per_s_reference"],
             r["speedup_ours_over_reference"], r["speedup_ours_over_reference_host_sync"],
             r["max_abs_diff_x_adv"])
    a = result.get("autoattack_standard")
    if a:
        log.info("AutoAttack standard on %d images: %.1f s -> %.0f s per 1000 images (per attack: %s)",
                 a["images"], a["seconds"], a["seconds_per_1000_images"],
                 ", ".join(f"{k} {v:.1f}s" for k, v in a["seconds_per_attack"].items()))
    _save(args.out, result)
    print(json.dumps({"speedup": round(r["speedup_ours_over_reference"], 3),
                      "aa_seconds_per_1000": round(a["seconds_per_1000_images"], 1) if a else None}))


def _save(out: str | None, result: dict) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result)
        log.info("wrote %s", out)


if __name__ == "__main__":
    main()
