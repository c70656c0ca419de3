"""Randomized-smoothing certification (Cohen et al., 2019).

* :mod:`~robustmaxup.certify.bounds` -- pure statistics (Clopper-Pearson, binomial test, radius).
* :mod:`~robustmaxup.certify.smooth` -- :class:`Smooth`: batched sampling and counting.
* :mod:`~robustmaxup.certify.analysis` -- certified accuracy, ACR, tables and plots from TSVs.

Example::

    from robustmaxup.certify import Smooth, ABSTAIN
    smooth = Smooth(model, num_classes=10, sigma=0.25)
    cert = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=1000,
                          generator=torch.Generator().manual_seed(0))
    if cert.prediction != ABSTAIN:
        print(cert.prediction, cert.radius)
"""

from robustmaxup.certify.smooth import ABSTAIN, Certificate, Prediction, Smooth

__all__ = ["ABSTAIN", "Certificate", "Prediction", "Smooth"]
