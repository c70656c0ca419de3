"""bf16 vs fp32 CERTIFY on one trained model, packing invariance, and experiments/check_precision.py.

On the CPU ``Smooth(precision="bf16")`` runs the model under ``torch.autocast("cpu", bfloat16)``,
so the precision claim is testable without a GPU; the CUDA test re-runs the script's core there.
Noise is identical across runs: image i's generator is ``stream_generator(0, "certify.noise", i)``,
as in ``certify_dataset``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robustmaxup.certify import Smooth
from robustmaxup.certify.runner import certify_dataset
from robustmaxup.certify.tsv import radius_as_written
from robustmaxup.checkpoints import load_model
from robustmaxup.data import load_split, select_indices
from robustmaxup.runtime.seeds import stream_generator
from experiment_scripts import load_experiment  # noqa: E402

N0, N, ALPHA, SIGMA = 50, 500, 0.001, 0.25


def _script():
    return load_experiment("check_precision")


def _certify(model, split, indices, precision, k, batch_size=250, device="cpu"):
    """Certificates of ``split[indices]``, ``k`` images per certify_batch call, runner seeding."""
    smooth = Smooth(model, 10, SIGMA, precision=precision)
    certs = []
    for start in range(0, len(indices), k):
        group = indices[start:start + k]
        xs, _ = split.batch(group)
        gens = [stream_generator(0, "certify.noise", i, device=device) for i in group]
        certs += smooth.certify_batch(xs.to(device), N0, N, ALPHA, batch_size, gens)
    return certs


@pytest.fixture(scope="module", autouse=True)
def one_thread(digits_checkpoint):
    """digits_cnn is tiny: one thread is about as fast, and does not stall on a busy machine.
    (The shared checkpoint is trained first, under the suite's thread count, so it is the same
    model whichever test trains it.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(digits_checkpoint):
    model, _ = load_model(digits_checkpoint, dataset="digits")
    return model, load_split("digits", "test")


def test_bf16_certification_agrees_with_fp32(digits):
    model, split = digits
    indices = select_indices(len(split), 1, 200)
    fp32 = _certify(model, split, indices, "fp32", 10)
    bf16 = _certify(model, split, indices, "bf16", 10)
    pa, pb = np.array([c.prediction for c in fp32]), np.array([c.prediction for c in bf16])
    flips = np.array([np.abs(np.subtract(a.counts, b.counts)).sum() // 2 for a, b in zip(fp32, bf16)])
    both = (pa == pb) & (pa >= 0)
    dr = np.abs(np.array([c.radius for c in fp32]) - np.array([c.radius for c in bf16]))[both]
    # the model is not trivial: fp32 certifies most images, with spread-out radii
    assert (pa >= 0).sum() >= 100 and np.ptp([c.radius for c in fp32 if c.prediction >= 0]) > 0.2
    # bf16 really ran (same noise, so any difference is the precision) ...
    assert flips.sum() > 0, "bf16 and fp32 gave identical votes: is autocast applied at all?"
    # ... and changes few votes. Measured (shared 2-core x86 CPU, 200 images): agreement 0.995
    # (one image), 0.3% of the votes moved (at most 7 of 500 per image), |dR| mean 0.002 / max
    # 0.011 over the 150 images both certify. One vote near unanimity moves the radius by ~0.03
    # at n=500, hence the looser bound on the max.
    assert (pa == pb).mean() >= 0.99, (pa != pb).sum()
    assert flips.sum() / (len(indices) * N) < 0.01, flips.sum()
    assert dr.mean() < 0.01 and dr.max() < 0.1, (dr.mean(), dr.max())


def test_packing_gives_bit_identical_certificates_on_cpu(digits):
    model, split = digits
    indices = select_indices(len(split), 1, 60)
    one = _certify(model, split, indices, "fp32", 1)
    assert len({c.counts for c in one}) > 30  # not a constant classifier
    # 7 does not divide 60 (a short last group); batch 130 slices the forward across images
    for k, batch_size in ((4, 250), (7, 250), (4, 130)):
        assert _certify(model, split, indices, "fp32", k, batch_size) == one, (k, batch_size)


def test_packing_through_certify_dataset(digits):
    model, split = digits
    indices = select_indices(len(split), 1, 20)
    rows = {k: [(r.idx, r.predict, r.radius) for r in certify_dataset(
        Smooth(model, 10, SIGMA, precision="fp32"), split, indices, n0=N0, n=N, alpha=ALPHA,
        batch_size=250, images_per_batch=k, progress=False)] for k in (1, 7)}
    assert rows[1] == rows[7]
    certs = _certify(model, split, indices, "fp32", 1)  # the runner's seeding, image by image
    assert [(p, r) for _, p, r in rows[1]] == [(c.prediction, radius_as_written(c.radius)) for c in certs]


def test_check_precision_script_quick(digits_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "precision.json"
    script, saved = _script(), []
    write = script.atomic_write_json
    monkeypatch.setattr(script, "atomic_write_json", lambda path, obj: (saved.append(obj), write(path, obj)))
    code = script.main(["--quick", "--checkpoint", digits_checkpoint, "--max", "30", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.strip().splitlines()[-1].startswith("PASS")
    # saved after each of the 4 runs, then complete
    assert [(len(r["modes"]), r["complete"]) for r in saved] == \
        [(1, False), (2, False), (3, False), (4, False), (4, True)]
    assert set(saved[1]["comparisons"]) == {"bf16_vs_fp32"} and len(saved[0]["rows"]) == 30
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(saved[-1], default=str))
    assert set(report["modes"]) == {"fp32", "bf16", "fp32_packed", "bf16_packed"}
    assert report["modes"]["bf16"]["autocast"] == "torch.bfloat16" and report["modes"]["fp32"]["autocast"] == "None"
    cmp = report["comparisons"]
    assert cmp["bf16_vs_fp32"]["prediction_agreement"] >= 0.99 and cmp["bf16_vs_fp32"]["vote_flips"] > 0
    for key in ("fp32_packed_vs_fp32", "bf16_packed_vs_bf16"):
        assert cmp[key]["identical_certificates"] == 30 and cmp[key]["vote_flips"] == 0
    assert report["passed"] and report["failures"] == []
    assert report["settings"]["n"] == 500 and report["settings"]["pack"] == 4 and len(report["rows"]) == 30
    row = report["rows"][0]
    assert {"idx", "label", "fp32", "bf16", "fp32_packed", "bf16_packed"} <= set(row)
    assert sum(row["fp32"]["counts"].values()) == 500
    assert report["model"]["checkpoint_sha256"] and "git_sha" in report["provenance"]


def test_check_precision_script_fails_when_bf16_is_broken(digits_checkpoint, monkeypatch, capsys):
    """The check can fail: a bf16 path that perturbs the logits breaks the agreement goal."""
    logits = Smooth.logits

    def broken(self, batch, **kw):
        out = logits(self, batch, **kw)
        return out + 5 * torch.randn_like(out) if self.precision == "bf16" else out

    monkeypatch.setattr(Smooth, "logits", broken)
    code = _script().main(["--quick", "--checkpoint", digits_checkpoint, "--max", "10"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 1 and last.startswith("FAIL: bf16 and fp32 predictions agree on"), last


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_precision_and_packing(digits_checkpoint):
    """On CUDA: packing changes no fp32 prediction (cudnn may pick other kernels per batch shape,
    so a few near-tie votes may move: bounded, not zero), and bf16 agrees with fp32. CUDA noise
    differs from the CPU's, so the images at p_lower ~ 1/2 differ too: up to 4 of 200 may switch
    between abstain and a tiny radius (1 on the CPU); none may change class."""
    model, _ = load_model(digits_checkpoint, dataset="digits", device="cuda")
    split = load_split("digits", "test")
    indices = select_indices(len(split), 1, 200)
    report = _script().run_check(model, 10, SIGMA, split, indices, n0=N0, n=N, batch=250, pack=4)
    packed, bf16 = report["comparisons"]["fp32_packed_vs_fp32"], report["comparisons"]["bf16_vs_fp32"]
    assert report["modes"]["bf16"]["autocast"] == "torch.bfloat16"
    assert packed["prediction_changes"] == 0 and packed["vote_flip_rate"] < 1e-3, packed
    assert bf16["prediction_agreement"] >= 0.98 and bf16["class_changes"] == 0, bf16
    assert (bf16["certify_changes_max_radius"] or 0) < 0.05 and bf16["vote_flip_rate"] < 0.01, bf16
