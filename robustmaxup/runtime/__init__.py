"""The bottom room: mechanisms every other room shares, each with one home.

* :mod:`~robustmaxup.runtime.dist` -- the process group (torchrun), device placement.
* :mod:`~robustmaxup.runtime.seeds` -- named seed streams and generators.
* :mod:`~robustmaxup.runtime.records` -- provenance, result sidecars, the resume guard.
* :mod:`~robustmaxup.runtime.checks` -- value checks whose errors name the *field*.
* :mod:`~robustmaxup.runtime.io` -- atomic and exclusive file creation, locks, output-path
  checks (never over an input).
* :mod:`~robustmaxup.runtime.limits` -- caps and memory estimates for absurd sizes.
* :mod:`~robustmaxup.runtime.text` -- control characters escaped before they reach a terminal.
* :mod:`~robustmaxup.runtime.faults` -- injected crashes/pauses at named write boundaries (tests).

Nothing here imports another robustmaxup room (only ``errors`` and ``registry``).
"""
