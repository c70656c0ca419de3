"""``torch.compile`` paths (``train --compile``, ``certify --compile``) on the CPU: they trace,
run, and give what the eager paths give. Slow: compiling costs ~20 s per graph on 2 cores.
The CUDA variants (bf16 autocast, channels_last) run in the GPU session (experiments/GPU_PLAN.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustmaxup.certify import Smooth
from robustmaxup.checkpoints import load_model
from robustmaxup.cli import main
from robustmaxup.data import load_split

pytestmark = pytest.mark.slow


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_compiled_maxup_training_matches_eager(tmp_path):
    """MaxUp's no-grad scoring forward and its training forward both go through the compiled
    model; one epoch's losses equal the eager run's (same seed, fp32) up to kernel rounding."""
    common = ["train", "--dataset", "digits", "--arch", "digits_cnn", "--method", "maxup",
              "--copies", "4", "--sigma", "0.25", "--epochs", "2", "--max-train", "256",
              "--batch", "64", "--device", "cpu", "--quiet", "--seed", "3"]
    assert main([*common, "--out", str(tmp_path / "eager")]) == 0
    assert main([*common, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 2
    assert compiled == pytest.approx(eager, rel=1e-3)
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"] is True


@pytest.mark.parametrize("mode", [True, "max-autotune-no-cudagraphs"])
def test_compiled_certification_matches_eager(digits_checkpoint, mode):
    """Same noise, compiled forward: the same votes on every image (a near-tie could flip one
    vote by rounding, so counts are allowed to differ by 1 vote in 300 at most)."""
    model, _ = load_model(digits_checkpoint, dataset="digits", num_classes=10, device=torch.device("cpu"))
    split = load_split("digits", "test")
    xs = torch.stack([split[i][0] for i in range(0, 60, 12)])
    kw = dict(n0=20, n=300, alpha=0.01, batch_size=150)
    def gens():
        return [torch.Generator().manual_seed(i) for i in range(len(xs))]

    eager = Smooth(model, 10, 0.25).certify_batch(xs, **kw, generators=gens())
    smooth = Smooth(model, 10, 0.25, compile=mode)
    compiled = smooth.certify_batch(xs, **kw, generators=gens())
    assert smooth._forward is not smooth._eager                 # the compiled path really ran
    for a, b in zip(eager, compiled):
        assert a.prediction == b.prediction
        assert sum(abs(p - q) for p, q in zip(a.counts, b.counts)) <= 2
        assert b.radius == pytest.approx(a.radius, abs=0.02)
