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

Sequential CERTIFY / PREDICT (:meth:`Smooth.certify_sequential`, :meth:`Smooth.predict_sequential`)
draw the estimation samples in the same chunks but look at the votes at a fixed schedule of sample
counts (:func:`~robustmaxup.certify.bounds.look_schedule`: geometric, multiples of
``noise_chunk``, ending at ``n_max``) and stop as soon as the answer is decided, using an
anytime-valid confidence sequence (:func:`~robustmaxup.certify.bounds.confidence_sequence`)
instead of Clopper-Pearson. The schedule does not depend on ``batch_size`` nor on which images
share a batch, so packing again changes only the speed; counts cross to the host once per look.

Example::

    smooth = Smooth(model, num_classes=10, sigma=0.25)
    g = torch.Generator().manual_seed(0)
    cert = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=1000, generator=g)
    cert.prediction, cert.radius     # (3, 0.61) or (ABSTAIN, 0.0)
    g = torch.Generator().manual_seed(0)
    cert = smooth.certify_sequential(x, n0=100, n_max=100_000, alpha=0.001, batch_size=1000,
                                     radii=[0.25, 0.5, 0.75, 1.0], generator=g)
    cert.n_used                      # e.g. 5800 samples instead of 100,000 (unanimous votes)
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from robustmaxup.certify import bounds
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import (
    FieldError, check_choice, check_class_indices, check_int, check_pixels, check_positive,
)
from robustmaxup.models.fold import fold_batchnorm
from robustmaxup.models.state import check_model_input, model_state

log = logging.getLogger(__name__)

ABSTAIN = -1

# How sequential CERTIFY gives up on a radius it has not decided (see Smooth.certify_sequential).
FUTILITY_RULES = ("projected", "unanimous")

# --precision name -> autocast dtype (None: run in the input's own dtype).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Certificate:
    """The result of CERTIFY for one image.

    Attributes:
        prediction: the certified class, or ``ABSTAIN`` (-1).
        radius: certified L2 radius in [0, 1] pixel units (0.0 when abstaining).
        p_lower: one-sided ``(1 - alpha)`` lower confidence bound on ``P[f(x+delta) = c_A]``
            (for sequential CERTIFY: the anytime-valid bound at the stopping time).
        counts: votes per class among the ``n_used`` estimation samples.
        n_used: estimation samples drawn (``n`` for fixed-n CERTIFY; the stopping time for
            sequential CERTIFY). Optional when constructing: defaults to ``sum(counts)``.

    It unpacks as Cohen et al.'s ``certify`` returns: ``prediction, radius = smooth.certify(...)``.
    """

    prediction: int
    radius: float
    p_lower: float
    counts: tuple[int, ...]
    n_used: int = -1

    def __post_init__(self) -> None:
        if self.n_used == -1:
            object.__setattr__(self, "n_used", int(sum(self.counts)))

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def __iter__(self) -> Iterator[Any]:
        """``(prediction, radius)``, so code written for Cohen et al.'s tuple keeps working."""
        return iter((self.prediction, self.radius))


@dataclass(frozen=True)
class Prediction:
    """The result of sequential PREDICT for one image: the class or ``ABSTAIN`` (-1), and the
    samples drawn before it stopped (``n_used``)."""

    prediction: int
    n_used: int


def top_class(counts: np.ndarray) -> int:
    """Index of the largest count; ties go to the lowest class index (deterministic)."""
    return int(np.argmax(counts))


def top_two(counts: np.ndarray) -> tuple[int, int]:
    """The two classes with the most votes, ties broken toward the lower class index."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    return int(order[0]), int(order[1]) if len(order) > 1 else -1



def _one_image(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[C, H, W]`` as a batch of one; FieldError for anything else (several images go to
    the ``*_batch`` methods)."""
    if not isinstance(x, torch.Tensor):
        raise FieldError("x", f"must be a torch.Tensor of pixels, got {type(x).__name__}")
    if x.dim() != 3:
        raise FieldError("x", f"must be one image [C, H, W], got shape {tuple(x.shape)} (several images "
                              "[k, C, H, W]: the *_batch methods)")
    return x[None]


def _one_generator(generator: torch.Generator | None) -> list[torch.Generator | None]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise FieldError("generator", f"must be a torch.Generator or None, got {type(generator).__name__}")
    return [generator]

class Smooth:
    """A Gaussian-smoothed classifier over ``base_classifier``.

    Args:
        base_classifier: ``nn.Module`` mapping pixel images ``[B, C, H, W]`` in [0, 1] to logits
            ``[B, num_classes]``; it is run in eval mode and must live on the images' device.
        num_classes: number of classes.
        sigma: noise standard deviation in [0, 1] pixel units.
        precision: ``"auto"`` (bf16 autocast on CUDA, the input's dtype elsewhere), ``"bf16"``
            or ``"fp32"`` (on CUDA, convolutions then follow ``torch.backends.cudnn.allow_tf32``,
            which PyTorch turns on by default).
        channels_last: convert model and batches to channels_last; ``None`` = on CUDA only. The
            model's parameters are converted in place on first use (they stay ordinary tensors:
            the model can be trained afterwards).
        compile: wrap the model in ``torch.compile`` (compile time is logged once); a string
            is the compile ``mode`` (e.g. ``"max-autotune"``).
        fold_bn: run a copy of the model with each ``Conv → BatchNorm`` pair folded into one
            convolution (:func:`robustmaxup.models.fold.fold_batchnorm`): fewer bytes moved per
            forward pass, the same function up to rounding. The copy is made once, on first use;
            ``base_classifier`` is not modified.
        noise_chunk: samples per noise draw; results depend on it (not on batch packing).

    Example::

        smooth = Smooth(model.eval(), 10, sigma=0.5)
        label = smooth.predict(x, n=1000, alpha=0.001, batch_size=500)
    """

    def __init__(
        self, base_classifier: nn.Module, num_classes: int, sigma: float, *,
        precision: str = "auto", channels_last: bool | None = None, compile: bool | str = False,
        fold_bn: bool = False, noise_chunk: int = 100,
    ) -> None:
        if not isinstance(base_classifier, nn.Module):
            raise FieldError("base_classifier", f"must be a torch.nn.Module, got {type(base_classifier).__name__}")
        check_positive("sigma", sigma)
        check_int("num_classes", num_classes, minimum=2)
        if precision != "auto" and precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
        check_int("noise_chunk", noise_chunk, minimum=1)
        self.base_classifier = base_classifier
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.precision = precision
        self.channels_last = channels_last
        self.compile = compile
        self.fold_bn = bool(fold_bn)
        self.noise_chunk = int(noise_chunk)
        self._forward: nn.Module | None = None
        self._eager: nn.Module = base_classifier
        self._prepared_for: torch.device | None = None
        self._compile_logged = False
        self._warned: set[tuple] = set()
        self._sequence_ok: dict[tuple, bool] = {}  # (n_max, alpha, sequence) -> can ever certify
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
        return self.certify_batch(_one_image(x), n0, n, alpha, batch_size, _one_generator(generator))[0]

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
        n0, n, batch_size = self._check_args(xs, generators, n, alpha, batch_size, n0=n0)
        self.warn_if_too_few(n, alpha)
        picks = self._select(xs, n0, batch_size, generators)
        counts = self.sample_counts(xs, n, batch_size, generators)
        return [self._decide(c_a, row, n, alpha) for c_a, row in zip(picks, counts)]

    def certify_sequential(
        self, x: torch.Tensor, n0: int, n_max: int, alpha: float, batch_size: int,
        radii: Sequence[float] | None = None, generator: torch.Generator | None = None, *,
        radius_tol: float = 0.02, sequence: str = bounds.DEFAULT_SEQUENCE, futility: str = "projected",
    ) -> Certificate:
        """Sequential (anytime-valid) CERTIFY for one image ``x`` ``[C, H, W]``: like
        :meth:`certify`, but it stops drawing samples as soon as the answer is decided.

        ``c_A`` is chosen from ``n0`` selection samples exactly as :meth:`certify` does (same
        noise draws). Estimation samples are then drawn and, at each look ``t`` of the fixed
        schedule ``bounds.confidence_sequence(sequence).schedule(n_max, noise_chunk)``, the
        anytime-valid bounds ``L_t <= p_A <= U_t`` are updated from the votes ``k_t`` for
        ``c_A`` (running max / min over looks). Sampling stops at ``n_max`` or earlier:

        * with target ``radii``: when every ``r`` is decided -- certified (``L_t >=
          Phi(r/sigma)``), refuted (``U_t < Phi(r/sigma)``) or out of reach: with
          ``futility="unanimous"``, even if every remaining sample up to ``n_max`` voted for
          ``c_A`` the bound at ``n_max`` would stay below ``Phi(r/sigma)``; with
          ``futility="projected"`` (default), even if the remaining samples voted for ``c_A`` at
          the rate ``U_t`` (the upper confidence bound, so an optimistic projection) it would
          stay below -- this stops the runs that sit just above a threshold, which fixed-n
          CERTIFY usually does not certify either; it changes only *when* sampling stops, never the
          validity of the result;
        * with ``radii=None``: when ``U_t <= 1/2`` (it will abstain), or when the radius is
          pinned down: ``sigma * (Phi^-1(min(U_t, best)) - Phi^-1(L_t)) < radius_tol`` (``best``:
          the bound reachable at ``n_max`` under the ``futility`` rule's projection, which also
          caps ``U_t = 1`` on unanimous votes).

        It returns ``(c_A, sigma * Phi^-1(L_tau))`` if ``L_tau > 1/2`` at the stopping time
        ``tau``, else ``ABSTAIN``; ``n_used = tau``. If it runs to ``n_max`` its votes are those
        of :meth:`certify` with ``n = n_max`` and the same generator.

        Guarantee: with probability at least ``1 - alpha`` over the sampling, if a class and
        radius ``R`` are returned then ``g(x + delta) = prediction`` for every ``||delta||_2 < R``
        -- i.e. the returned radius is not larger than the true radius -- **whatever the stopping
        rule**: ``L_t`` is a confidence sequence, ``P[L_t <= p_A for all t] >= 1 - alpha``
        (Ville's inequality), so it also holds at the data-dependent time ``tau``. Re-computing
        the fixed-n Clopper-Pearson bound after every batch and stopping when it certifies is
        NOT valid: each check has error ``alpha`` at its own fixed ``n``, but stopping at the
        first success takes the union of these events, whose probability grows with the number
        of looks (the law of the iterated logarithm makes it tend to 1); ``tests/test_sequential.py``
        measures several times ``alpha`` for that rule.

        Args:
            x: one image ``[C, H, W]`` in [0, 1], on the model's device.
            n0: selection samples (>= 1). n_max: most estimation samples (>= 1).
            alpha: failure probability in (0, 1). batch_size: samples per forward pass.
            radii: target radii (>= 0) to decide, or ``None`` (estimate the radius to
                ``radius_tol``).
            generator: noise source on ``x.device`` (``None``: torch's global generator).
            radius_tol: stopping width in radius units when ``radii`` is ``None``.
            sequence: name in :data:`bounds.CONFIDENCE_SEQUENCES` (default: one-sided
                beta-binomial mixture plus a Clopper-Pearson stage at ``n_max``, see
                :func:`bounds.confidence_sequence`).
            futility: ``"projected"`` or ``"unanimous"`` (see above).

        Example::

            g = torch.Generator().manual_seed(0)
            cert = smooth.certify_sequential(x, 100, 100_000, 0.001, 1000, [0.25, 0.5], g)
            cert.prediction, cert.radius, cert.n_used
        """
        return self.certify_sequential_batch(_one_image(x), n0, n_max, alpha, batch_size, _one_generator(generator),
                                             radii, radius_tol=radius_tol, sequence=sequence, futility=futility)[0]

    def certify_sequential_batch(
        self, xs: torch.Tensor, n0: int, n_max: int, alpha: float, batch_size: int,
        generators: Sequence[torch.Generator | None], radii: Sequence[float] | None = None, *,
        radius_tol: float = 0.02, sequence: str = bounds.DEFAULT_SEQUENCE, futility: str = "projected",
    ) -> list[Certificate]:
        """Sequential CERTIFY (:meth:`certify_sequential`) for ``k`` images ``[k, C, H, W]``, one
        generator each. Images that stop drop out of later looks; the certificates (and the
        guarantee, per image) are exactly those of :meth:`certify_sequential` image by image,
        for any ``batch_size``.

        Example::

            gens = [torch.Generator().manual_seed(s) for s in range(len(xs))]
            certs = smooth.certify_sequential_batch(xs, 100, 100_000, 0.001, 4000, gens,
                                                    radii=[0.25, 0.5, 0.75, 1.0])
        """
        n0, n_max, batch_size = self._check_args(xs, generators, n_max, alpha, batch_size, n0=n0, n_name="n_max")
        if not radius_tol > 0:
            raise FieldError("radius_tol", f"must be > 0, got {radius_tol}")
        check_choice("futility", futility, FUTILITY_RULES)
        seq = bounds.confidence_sequence(sequence)
        thresholds = None if radii is None else bounds.radius_thresholds(radii, self.sigma)
        looks = seq.schedule(int(n_max), self.noise_chunk)
        self._warn_if_sequence_too_short(seq, looks, alpha)
        picks = np.asarray(self._select(xs, n0, batch_size, generators), dtype=np.int64)
        k = xs.shape[0]
        votes = np.zeros((k, len(looks)), dtype=np.int64)   # count of c_A at each look
        lower, upper = np.zeros(k), np.ones(k)

        def step(j: int, idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
            votes[idx, j] = counts[np.arange(len(idx)), picks[idx]]
            path = votes[idx, :j + 1]
            ts = np.asarray(looks[:j + 1])
            lower[idx] = np.maximum(lower[idx], seq.lower(path, ts, alpha, looks))
            upper[idx] = np.minimum(upper[idx], seq.upper(path, ts, alpha, looks))
            if j == len(looks) - 1:
                return np.ones(len(idx), dtype=bool)
            best = seq.best_lower(path, looks, alpha, None if futility == "unanimous" else upper[idx])
            return bounds.sequential_done(lower[idx], upper[idx], best, self.sigma, thresholds, radius_tol)

        counts, n_used = self._run_looks(xs, looks, batch_size, generators, step)
        log.debug("sequential certify: %d images, mean %.0f samples (n_max %d)", k, n_used.mean(), n_max)
        return [self._certificate(int(c_a), row, float(p), int(t))
                for c_a, row, p, t in zip(picks, counts, lower, n_used)]

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
        return self.predict_batch(_one_image(x), n, alpha, batch_size, _one_generator(generator))[0]

    def predict_batch(
        self, xs: torch.Tensor, n: int, alpha: float, batch_size: int,
        generators: Sequence[torch.Generator | None],
    ) -> list[int]:
        """PREDICT for ``k`` images ``[k, C, H, W]``, one generator each (see :meth:`predict`)."""
        _, n, batch_size = self._check_args(xs, generators, n, alpha, batch_size)
        out = []
        for row in self.sample_counts(xs, n, batch_size, generators):
            c_a, c_b = top_two(row)
            n_b = int(row[c_b]) if c_b >= 0 else 0
            p = bounds.binomial_test_pvalue(int(row[c_a]), n_b)
            out.append(c_a if p <= alpha else ABSTAIN)
        return out

    def certified_correct(
        self, xs: torch.Tensor, labels: torch.Tensor, radius: float, n: int, alpha: float,
        batch_size: int, generators: Sequence[torch.Generator | None],
    ) -> np.ndarray:
        """Whether the smoothed classifier is certified to return each image's **known** label on
        the L2 ball of radius ``radius``: ``[k]`` bool, the per-image terms of certified accuracy
        at ``radius``. Used to select checkpoints (``robustmaxup train --eval-radius``).

        The label is fixed before sampling, so CERTIFY's selection phase is not needed: ``k`` of
        ``n`` noisy copies vote for the label, and the image counts when the one-sided
        ``(1 - alpha)`` Clopper-Pearson bound certifies ``radius``
        (:func:`~robustmaxup.certify.bounds.certified_at`). Guarantee, per image: if ``g`` does
        not return the label on the whole ball, True comes back with probability at most
        ``alpha``. Whenever :meth:`certify` on the same ``n`` estimation samples would count the
        image, this does too (it cannot be hurt by a wrong selection on ``n0`` samples).

        Args:
            xs: images ``[k, C, H, W]`` in [0, 1]. labels: ``[k]`` class indices.
            radius: L2 radius (>= 0). n, alpha, batch_size, generators: as in :meth:`predict_batch`.

        Example::

            ok = smooth.certified_correct(x, y, 0.25, n=100, alpha=0.001, batch_size=500,
                                          generators=[g] * len(y))
            certified_accuracy = ok.mean()
        """
        _, n, batch_size = self._check_args(xs, generators, n, alpha, batch_size)
        if labels.shape != (xs.shape[0],):
            raise FieldError("labels", f"must have shape [{xs.shape[0]}], got {tuple(labels.shape)}")
        check_class_indices("labels", labels, self.num_classes)
        counts = self.sample_counts(xs, n, batch_size, generators)
        votes = counts[np.arange(len(counts)), labels.cpu().numpy()]
        return np.asarray(bounds.certified_at(votes, n, alpha, radius, self.sigma), dtype=bool).reshape(-1)

    def predict_sequential(
        self, x: torch.Tensor, n_max: int, alpha: float, batch_size: int,
        generator: torch.Generator | None = None, *, futility: str = "projected",
    ) -> int:
        """Sequential (anytime-valid) PREDICT for one image ``x`` ``[C, H, W]``: the class or
        ``ABSTAIN``, drawing at most ``n_max`` samples and stopping once decided.

        At each look ``t`` of ``bounds.look_schedule(n_max, noise_chunk)``, with the top two
        vote counts ``n_A >= n_B`` (ties to the lower class index), it computes the one-sided
        beta-binomial mixture evidence ``M = M(n_A, n_A + n_B)`` against ``q <= 1/2``, where
        ``q = p_A / (p_A + p_B)`` is the chance that a vote for A or B is for A
        (:func:`bounds.one_sided_mixture_log_evidence` at ``m = 1/2``). It returns A as soon as
        ``M >= (C - 1) / alpha`` (``C = num_classes``), abstains once it cannot get there by
        ``n_max`` (``futility``, below), and abstains at ``n_max``.

        ``futility="unanimous"`` gives up only when even ``n_max - t`` further votes, all for A,
        could not reach the threshold. ``"projected"`` (default) also gives up when the further
        votes, all for A or B and split at A's optimistic share (the one-sided ``(1 - alpha)``
        Clopper-Pearson upper bound on ``q``, plus :data:`bounds.PROJECTION_Z` standard
        deviations of luck), could not: near-ties stop at about half of ``n_max`` instead of
        running to it. Giving up only ever abstains, so neither rule affects the guarantee.

        Guarantee: ``P[returns a class other than g(x)] <= alpha``, whatever the stopping time.
        Proof sketch: if it returns ``c != c* = g(x)`` at some look then ``n_{c*} <= n_B`` there,
        and the evidence only grows when B-votes are removed, so the pair process
        ``M(n_c, n_c + n_{c*})`` -- a nonnegative supermartingale because ``p_c <= p_{c*}`` --
        reached ``(C - 1)/alpha``: probability ``<= alpha / (C - 1)`` by Ville's inequality, and
        there are at most ``C - 1`` such ``c``. (For fixed ``n`` the rank-verification argument
        behind :meth:`predict` needs no ``C - 1`` factor; it is not known to survive
        data-dependent stopping, so the union bound is kept.)

        Example::

            label = smooth.predict_sequential(x, n_max=10_000, alpha=0.001, batch_size=1000,
                                              generator=torch.Generator().manual_seed(0))
        """
        return self.predict_sequential_batch(_one_image(x), n_max, alpha, batch_size, _one_generator(generator),
                                             futility=futility)[0]

    def predict_sequential_batch(
        self, xs: torch.Tensor, n_max: int, alpha: float, batch_size: int,
        generators: Sequence[torch.Generator | None], *, futility: str = "projected",
    ) -> list[int]:
        """Sequential PREDICT (:meth:`predict_sequential`) for ``k`` images ``[k, C, H, W]``, one
        generator each; the same answers as image by image, for any ``batch_size``."""
        return [p.prediction for p in self.predict_sequential_details(xs, n_max, alpha, batch_size, generators,
                                                                      futility=futility)]

    def predict_sequential_details(
        self, xs: torch.Tensor, n_max: int, alpha: float, batch_size: int,
        generators: Sequence[torch.Generator | None], *, futility: str = "projected",
    ) -> list[Prediction]:
        """:meth:`predict_sequential_batch`, with the samples each image drew (its stopping time)."""
        _, n_max, batch_size = self._check_args(xs, generators, n_max, alpha, batch_size, n_name="n_max")
        check_choice("futility", futility, FUTILITY_RULES)
        looks = bounds.look_schedule(int(n_max), self.noise_chunk)
        threshold = bounds.predict_sequential_log_threshold(alpha, self.num_classes)
        out = np.full(xs.shape[0], ABSTAIN, dtype=np.int64)
        prior = bounds.MIXTURE_PRIOR

        def step(j: int, idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
            order = np.argsort(-counts, axis=1, kind="stable")
            rows = np.arange(len(idx))
            n_a, n_b = counts[rows, order[:, 0]], counts[rows, order[:, 1]]
            evidence = bounds.one_sided_mixture_log_evidence(n_a, n_a + n_b, 0.5, *prior)
            decided = evidence >= threshold
            out[idx[decided]] = order[decided, 0]
            rest = looks[-1] - looks[j]
            ahead = np.full(len(idx), float(rest))
            if futility == "projected":
                share = bounds.clopper_pearson_upper_array(n_a, n_a + n_b, alpha)
                ahead = bounds.projected_successes(ahead, share)
            futile = bounds.one_sided_mixture_log_evidence(n_a + ahead, n_a + n_b + rest, 0.5, *prior) < threshold
            return decided | futile

        n_used = self._run_looks(xs, looks, batch_size, generators, step)[1]
        return [Prediction(int(c), int(t)) for c, t in zip(out, n_used)]

    def warn_if_predict_sequence_too_short(self, n_max: int, alpha: float) -> bool:
        """Log (once per ``(n_max, alpha)``) if sequential PREDICT can never return a class with
        ``n_max`` samples, even unanimous ones; return whether it can."""
        need = bounds.min_samples_to_predict_sequential(alpha, self.num_classes)
        key = ("predict_sequential", int(n_max), float(alpha))
        if n_max < need and key not in self._warned:
            log.warning("warning: n_max=%d samples can never decide sequential PREDICT at alpha=%g "
                        "with %d classes; every image will abstain, use n_max >= %d",
                        n_max, alpha, self.num_classes, need)
        self._warned.add(key)
        return n_max >= need

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
    def _select(self, xs: torch.Tensor, n0: int, batch_size: int,
                generators: Sequence[torch.Generator | None]) -> list[int]:
        """CERTIFY's selection phase: ``c_A`` per image from ``n0`` noisy copies."""
        return [top_class(c) for c in self.sample_counts(xs, n0, batch_size, generators)]

    def _decide(self, c_a: int, row: np.ndarray, n: int, alpha: float) -> Certificate:
        return self._certificate(c_a, row, bounds.clopper_pearson_lower(int(row[c_a]), n, alpha), n)

    def _certificate(self, c_a: int, row: np.ndarray, p_lower: float, n_used: int) -> Certificate:
        counts = tuple(int(c) for c in row)
        if p_lower > 0.5:
            return Certificate(c_a, bounds.certified_radius(p_lower, self.sigma), p_lower, counts, n_used)
        return Certificate(ABSTAIN, 0.0, p_lower, counts, n_used)

    def _run_looks(
        self, xs: torch.Tensor, looks: Sequence[int], batch_size: int,
        generators: Sequence[torch.Generator | None],
        step: Callable[[int, np.ndarray, np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples look by look for the images still running.

        At look ``j`` the images ``idx`` still running get ``looks[j] - looks[j-1]`` more noisy
        copies each (their own generators, the usual chunks); then ``step(j, idx, counts[idx])``
        (cumulative votes ``[len(idx), num_classes]``) returns which of them stop. Returns the
        cumulative votes ``[k, num_classes]`` and the samples drawn per image ``[k]``.
        """
        k = xs.shape[0]
        counts = np.zeros((k, self.num_classes), dtype=np.int64)
        n_used = np.zeros(k, dtype=np.int64)
        active = np.arange(k)
        prev = 0
        for j, t in enumerate(looks):
            sub = xs if len(active) == k else xs[torch.as_tensor(active, device=xs.device)]
            counts[active] += self.sample_counts(sub, t - prev, batch_size, [generators[i] for i in active])
            n_used[active] = t
            prev = t
            stop = np.asarray(step(j, active, counts[active]), dtype=bool)
            active = active[~stop]
            if len(active) == 0:
                break
        return counts, n_used

    def warn_if_sequence_too_short(self, n_max: int, alpha: float,
                                   sequence: str = bounds.DEFAULT_SEQUENCE) -> bool:
        """Log (once per ``(n_max, alpha, sequence)``) if sequential certification with at most
        ``n_max`` samples can never certify, even with unanimous votes; return whether ok.
        Stricter than :meth:`warn_if_too_few` (a sequence spends part of alpha on early looks)."""
        seq = bounds.confidence_sequence(sequence)
        return self._warn_if_sequence_too_short(seq, seq.schedule(int(n_max), self.noise_chunk), alpha)

    def _warn_if_sequence_too_short(self, seq: bounds.ConfidenceSequence, looks: Sequence[int],
                                    alpha: float) -> bool:
        key = (int(looks[-1]), float(alpha), seq.name)
        if key not in self._sequence_ok:  # computed (and warned about) once, not every batch
            best = float(seq.lower(np.asarray([looks], dtype=np.int64), np.asarray(looks), alpha, tuple(looks))[0])
            if best <= 0.5:
                log.warning("n_max=%d samples can never certify with the %s confidence sequence at "
                            "alpha=%g: even unanimous votes give a lower bound of %.4f <= 0.5; raise n_max",
                            looks[-1], seq.name, alpha, best)
            self._sequence_ok[key] = best > 0.5
        return self._sequence_ok[key]

    def _check_args(self, xs: torch.Tensor, generators: Sequence, n: int, alpha: float,
                    batch_size: int, n0: int | None = None, n_name: str = "n") -> tuple[int | None, int, int]:
        """FieldError for the first bad argument; else ``(n0, n, batch_size)`` as Python ints
        (numpy's become Python's)."""
        if not isinstance(xs, torch.Tensor):
            raise FieldError("x", f"must be a torch.Tensor of pixels, got {type(xs).__name__}")
        if generators is None or not all(g is None or isinstance(g, torch.Generator) for g in generators):
            raise FieldError("generators", "must be one torch.Generator (or None) per image")
        if xs.dim() != 4:
            raise FieldError("x", f"must be images [k, C, H, W] (one image: [C, H, W]), got shape "
                                  f"{tuple(xs.shape)}")
        if not xs.is_floating_point():
            raise FieldError("x", f"must be floating-point pixels in [0, 1], got {xs.dtype}")
        if len(generators) != xs.shape[0]:
            raise FieldError("generators", f"must be one per image: {xs.shape[0]} images but "
                                           f"{len(generators)} generators")
        bounds.check_alpha(alpha)
        check_pixels(xs)
        n0, n, batch_size = (None if value is None else check_int(name, value, minimum=1)
                             for name, value in (("n0", n0), (n_name, n), ("batch_size", batch_size)))
        for g in generators:
            if g is not None and g.device.type != xs.device.type:
                raise FieldError("generators", f"live on {g.device} but the images on {xs.device}")
        check_model_input(self.base_classifier, xs)
        return n0, n, batch_size

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
        # called under inference_mode: converted parameters would become inference tensors and
        # the caller's model could no longer be trained (in place: the channels_last conversion)
        with torch.inference_mode(False):
            self._prepare_model(device)
        self._prepared_for = device

    def _prepare_model(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
        if self.fold_bn and self._eager is self.base_classifier:
            self._eager, pairs = fold_batchnorm(self.base_classifier)
            log.info("folded %d Conv-BatchNorm pair(s) into their convolutions", pairs)
        if self._use_channels_last(device):
            self._eager.to(memory_format=torch.channels_last)
        self._forward = self._eager
        if self.compile:
            mode = self.compile if isinstance(self.compile, str) else None
            self._forward = torch.compile(self._eager, dynamic=False, mode=mode)

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
        forward = self._forward if compiled else self._eager
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
            return self._votes(self.logits(batch))
        return torch.cat([self._votes(self.logits(batch[i:i + batch_size]))
                          for i in range(0, batch.shape[0], batch_size)])

    def _votes(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted classes of logits ``[B, num_classes]``; a model with another number of
        outputs would put votes into other images' counts (one shape check, no sync)."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise UserError(f"the model returns logits of shape {tuple(logits.shape[1:])} per image, but "
                            f"Smooth was given num_classes={self.num_classes}")
        return logits.argmax(1)
