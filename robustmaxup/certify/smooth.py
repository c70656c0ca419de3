"""The smoothed classifier ``g(x) = argmax_c P[f(x + delta) = c]``, ``delta ~ N(0, sigma^2 I)``,
with Cohen et al.'s (2019) CERTIFY and PREDICT, batched and device-agnostic.

How the noise is drawn (this is what makes runs reproducible and packing-invariant): image ``i``'s
noise comes only from its own ``torch.Generator`` and is always drawn in chunks of
``noise_chunk`` samples (the last chunk of a phase may be shorter): first the ``n0`` selection
samples, then the ``n`` estimation samples. How many images share one forward pass
(:meth:`Smooth.certify_batch`) and ``batch_size`` only decide which chunks travel together, so
under the same generators ``certify_batch`` returns exactly the certificates of ``certify``
called image by image (for a base classifier whose per-sample output does not depend on the rest
of its batch, e.g. any model in eval mode, up to floating-point reduction order on GPUs).

Counting stays on the device (``torch.bincount`` of ``argmax``); the counts cross to the host
once per phase.

Example::

    smooth = Smooth(model, num_classes=10, sigma=0.25)
    g = torch.Generator().manual_seed(0)
    cert = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=1000, generator=g)
    cert.prediction, cert.radius     # (3, 0.61) or (ABSTAIN, 0.0)
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from robustmaxup.certify import bounds
from robustmaxup.errors import UserError
from robustmaxup.models.state import model_state

log = logging.getLogger(__name__)

ABSTAIN = -1

# --precision name -> autocast dtype (None: run in the input's own dtype).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Certificate:
    """The result of CERTIFY for one image.

    Attributes:
        prediction: the certified class, or ``ABSTAIN`` (-1).
        radius: certified L2 radius in [0, 1] pixel units (0.0 when abstaining).
        p_lower: one-sided ``(1 - alpha)`` lower confidence bound on ``P[f(x+delta) = c_A]``.
        counts: votes per class among the ``n`` estimation samples.
    """

    prediction: int
    radius: float
    p_lower: float
    counts: tuple[int, ...]

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def top_class(counts: np.ndarray) -> int:
    """Index of the largest count; ties go to the lowest class index (deterministic)."""
    return int(np.argmax(counts))


def top_two(counts: np.ndarray) -> tuple[int, int]:
    """The two classes with the most votes, ties broken toward the lower class index."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    return int(order[0]), int(order[1]) if len(order) > 1 else -1


class Smooth:
    """A Gaussian-smoothed classifier over ``base_classifier``.

    Args:
        base_classifier: ``nn.Module`` mapping pixel images ``[B, C, H, W]`` in [0, 1] to logits
            ``[B, num_classes]``; it is run in eval mode and must live on the images' device.
        num_classes: number of classes.
        sigma: noise standard deviation in [0, 1] pixel units.
        precision: ``"auto"`` (bf16 autocast on CUDA, the input's dtype elsewhere), ``"bf16"``
            or ``"fp32"``.
        channels_last: convert model and batches to channels_last; ``None`` = on CUDA only. The
            model's parameters are converted in place on first use.
        compile: wrap the model in ``torch.compile`` (compile time is logged once).
        noise_chunk: samples per noise draw; results depend on it (not on batch packing).

    Example::

        smooth = Smooth(model.eval(), 10, sigma=0.5)
        label = smooth.predict(x, n=1000, alpha=0.001, batch_size=500)
    """

    def __init__(
        self, base_classifier: nn.Module, num_classes: int, sigma: float, *,
        precision: str = "auto", channels_last: bool | None = None, compile: bool = False,
        noise_chunk: int = 100,
    ) -> None:
        if not sigma > 0:
            raise UserError(f"sigma must be > 0, got {sigma}; e.g. --sigma 0.25")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if precision != "auto" and precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
        if noise_chunk < 1:
            raise ValueError(f"noise_chunk must be >= 1, got {noise_chunk}")
        self.base_classifier = base_classifier
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.precision = precision
        self.channels_last = channels_last
        self.compile = compile
        self.noise_chunk = int(noise_chunk)
        self._forward: nn.Module | None = None
        self._prepared_for: torch.device | None = None
        self._compile_logged = False
        self._warned: set[tuple[int, float]] = set()
        self._buf: torch.Tensor | None = None

    # ------------------------------------------------------------------ public API
    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
        generator: torch.Generator | None = None,
    ) -> Certificate:
        """Cohen et al.'s CERTIFY for one image ``x`` of shape ``[C, H, W]``.

        Draw ``n0`` noisy copies to pick ``c_A`` (the most frequent class; ties go to the lowest
        class index, which is valid because the choice is independent of the next samples), then
        ``n`` fresh copies; with ``k`` votes for ``c_A``, ``p_lower`` is the **one-sided**
        ``(1 - alpha)`` Clopper-Pearson lower bound on ``p_A``. If ``p_lower > 1/2`` return
        ``(c_A, sigma * Phi^{-1}(p_lower))``, else abstain (a tie for ``c_A`` among the ``n``
        samples means ``k <= n/2`` and always abstains).

        Guarantee: with probability at least ``1 - alpha`` over the sampling, if a class and
        radius ``R`` are returned then the smoothed classifier ``g`` satisfies
        ``g(x + delta) = prediction`` for every ``||delta||_2 < R``.

        Args:
            x: one image ``[C, H, W]`` in [0, 1], on the model's device.
            n0: selection samples (>= 1). n: estimation samples (>= 1).
            alpha: failure probability in (0, 1). batch_size: samples per forward pass.
            generator: noise source on ``x.device`` (``None``: torch's global generator).

        Returns:
            a :class:`Certificate`.
        """
        return self.certify_batch(x[None], n0, n, alpha, batch_size, [generator])[0]

    def certify_batch(
        self, xs: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
        generators: Sequence[torch.Generator | None],
    ) -> list[Certificate]:
        """CERTIFY for ``k`` images ``xs`` ``[k, C, H, W]`` at once, each with its own generator.

        Noise of several images shares each forward pass; the certificates (and the guarantee,
        per image) are exactly those of :meth:`certify` with the same generators.

        Example::

            gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
            a, b = smooth.certify_batch(torch.stack([x0, x1]), 100, 10_000, 0.001, 1000, gens)
        """
        self._check_args(xs, generators, n, alpha, batch_size, n0=n0)
        self.warn_if_too_few(n, alpha)
        counts0 = self.sample_counts(xs, n0, batch_size, generators)
        picks = [top_class(c) for c in counts0]
        counts = self.sample_counts(xs, n, batch_size, generators)
        return [self._decide(c_a, row, n, alpha) for c_a, row in zip(picks, counts)]

    def predict(
        self, x: torch.Tensor, n: int, alpha: float, batch_size: int,
        generator: torch.Generator | None = None,
    ) -> int:
        """Cohen et al.'s PREDICT for one image ``x`` ``[C, H, W]``: the class or ``ABSTAIN``.

        With the top two vote counts ``n_A >= n_B`` of ``n`` noisy copies, return the top class if
        the **two-sided** binomial test of ``n_A`` in ``n_A + n_B`` trials at ``p = 1/2`` has
        p-value ``<= alpha``, else abstain (a tie always abstains). Guarantee: the probability of
        returning a class other than ``g(x)`` is at most ``alpha``.
        """
        return self.predict_batch(x[None], n, alpha, batch_size, [generator])[0]

    def predict_batch(
        self, xs: torch.Tensor, n: int, alpha: float, batch_size: int,
        generators: Sequence[torch.Generator | None],
    ) -> list[int]:
        """PREDICT for ``k`` images ``[k, C, H, W]``, one generator each (see :meth:`predict`)."""
        self._check_args(xs, generators, n, alpha, batch_size)
        out = []
        for row in self.sample_counts(xs, n, batch_size, generators):
            c_a, c_b = top_two(row)
            n_b = int(row[c_b]) if c_b >= 0 else 0
            p = bounds.binomial_test_pvalue(int(row[c_a]), n_b)
            out.append(c_a if p <= alpha else ABSTAIN)
        return out

    def warn_if_too_few(self, n: int, alpha: float) -> bool:
        """Log (once per ``(n, alpha)``) if ``n`` samples can never certify; return whether ok."""
        key = (int(n), float(alpha))
        ok = bounds.can_ever_certify(n, alpha, warn=key not in self._warned)
        self._warned.add(key)
        return ok

    @torch.inference_mode()
    def sample_counts(
        self, xs: torch.Tensor, num: int, batch_size: int,
        generators: Sequence[torch.Generator | None],
    ) -> np.ndarray:
        """Votes ``[k, num_classes]`` (int64, on the host) of ``num`` noisy copies of each image.

        Image ``i``'s noise comes from ``generators[i]`` in chunks of ``noise_chunk`` samples;
        each round packs ``q = max(1, batch_size // (k * noise_chunk))`` chunks per image into
        one buffer (reused between calls), forwarded in slices of at most ``batch_size``.
        """
        k, shape = xs.shape[0], tuple(xs.shape[1:])
        self._prepare(xs.device)
        u = self.noise_chunk
        sizes = [u] * (num // u) + ([num % u] if num % u else [])
        q = max(1, batch_size // (k * u))
        counts = torch.zeros(k * self.num_classes, dtype=torch.int64, device=xs.device)
        with model_state(self.base_classifier, train=False):
            for start in range(0, len(sizes), q):
                round_sizes = sizes[start:start + q]
                m = sum(round_sizes)
                buf = self._buffer(k, m, shape, xs)
                for i, g in enumerate(generators):
                    off = 0
                    for s in round_sizes:
                        buf[i, off:off + s].normal_(generator=g)
                        off += s
                buf.mul_(self.sigma).add_(xs[:, None])
                preds = self._argmax(buf.view(k * m, *shape), batch_size)
                owner = torch.arange(k, device=xs.device).repeat_interleave(m)
                counts += torch.bincount(owner * self.num_classes + preds,
                                         minlength=k * self.num_classes)
        return counts.view(k, self.num_classes).cpu().numpy()

    # ------------------------------------------------------------------ internals
    def _decide(self, c_a: int, row: np.ndarray, n: int, alpha: float) -> Certificate:
        k = int(row[c_a])
        p_lower = bounds.clopper_pearson_lower(k, n, alpha)
        counts = tuple(int(c) for c in row)
        if p_lower > 0.5:
            return Certificate(c_a, bounds.certified_radius(p_lower, self.sigma), p_lower, counts)
        return Certificate(ABSTAIN, 0.0, p_lower, counts)

    def _check_args(self, xs: torch.Tensor, generators: Sequence, n: int, alpha: float,
                    batch_size: int, n0: int | None = None) -> None:
        if xs.dim() != 4:
            raise ValueError(f"expected images [k, C, H, W], got shape {tuple(xs.shape)}")
        if len(generators) != xs.shape[0]:
            raise ValueError(f"{xs.shape[0]} images but {len(generators)} generators")
        bounds.check_alpha(alpha)
        for name, value in (("n0", n0), ("n", n), ("batch", batch_size)):
            if value is not None and value < 1:
                raise UserError(f"--{name} must be >= 1, got {value}")
        for g in generators:
            if g is not None and g.device.type != xs.device.type:
                raise ValueError(f"generator on {g.device} but images on {xs.device}")
        p = next(iter(self.base_classifier.parameters()), None)
        if p is not None and p.device.type != xs.device.type:
            raise ValueError(f"model on {p.device} but images on {xs.device}; move one of them")

    def _buffer(self, k: int, m: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A ``[k, m, *shape]`` contiguous view of one reused flat buffer."""
        need = k * m * int(np.prod(shape))
        buf = self._buf
        if buf is None or buf.numel() < need or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buf = torch.empty(need, dtype=like.dtype, device=like.device)
        return buf[:need].view(k, m, *shape)

    def _prepare(self, device: torch.device) -> None:
        if self._prepared_for == device:
            return
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
        if self._use_channels_last(device):
            self.base_classifier.to(memory_format=torch.channels_last)
        self._forward = self.base_classifier
        if self.compile:
            self._forward = torch.compile(self.base_classifier, dynamic=False)
        self._prepared_for = device

    def _use_channels_last(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.channels_last is None else self.channels_last

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype used on ``device`` (``None``: no autocast)."""
        name = self.precision if self.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        return PRECISIONS[name]

    def logits(self, batch: torch.Tensor, *, compiled: bool = True) -> torch.Tensor:
        """Base-classifier logits ``[B, num_classes]`` under this object's precision settings
        (``compiled=False``: skip ``torch.compile``, e.g. for one-off checks)."""
        self._prepare(batch.device)
        if self._use_channels_last(batch.device) and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype(batch.device)
        forward = self._forward if compiled else self.base_classifier
        t0 = time.perf_counter()
        ctx = torch.autocast(batch.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            out = forward(batch)
        if compiled and self.compile and not self._compile_logged:
            if batch.device.type == "cuda":
                torch.cuda.synchronize(batch.device)
            log.info("torch.compile: first forward (compilation) took %.1f s", time.perf_counter() - t0)
            self._compile_logged = True
        return out

    def _argmax(self, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
        if batch.shape[0] <= batch_size:
            return self.logits(batch).argmax(1)
        return torch.cat([self.logits(batch[i:i + batch_size]).argmax(1)
                          for i in range(0, batch.shape[0], batch_size)])
