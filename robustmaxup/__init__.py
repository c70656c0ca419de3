"""robustmaxup: certifiably robust image classifiers.

Train smoothed classifiers (Gaussian augmentation, Gaussian-noise MaxUp and the baselines of the
field), certify their L2 radii by Monte-Carlo randomized smoothing, and measure empirical
robustness with AutoAttack. Importing the package runs nothing; the CLI is ``robustmaxup``.
"""

__version__ = "0.1.0"
