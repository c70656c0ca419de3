"""The bottom room: mechanisms every other room shares, each with one home.

* :mod:`~robustmaxup.runtime.dist` -- the process group (torchrun), device placement.
* :mod:`~robustmaxup.runtime.seeds` -- named seed streams and generators.
* :mod:`~robustmaxup.runtime.records` -- provenance, result sidecars, the resume guard.
* :mod:`~robustmaxup.runtime.checks` -- value checks whose errors name the *field*.
* :mod:`~robustmaxup.runtime.io` -- atomic and exclusive file creation.

Nothing here imports another robustmaxup room (only ``errors`` and ``registry``).
"""
