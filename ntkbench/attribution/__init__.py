"""Data-attribution benchmark (SPEC §6): subset retraining, attribution methods, LDS and
mislabel detection.

Modules: :mod:`.subsets` (deterministic subset draws), :mod:`.retrain` (subset models and
checkpointed training), :mod:`.gradients` (per-sample gradients, projection), :mod:`.methods`
(τ(x, i) of every method), :mod:`.lds`, :mod:`.mislabel` (detection AUC; label flipping itself
lives in :mod:`ntkbench.data.label_noise`), :mod:`.benchmark` (the steps a workflow stage calls,
``ntkbench.stages.attribution``). The figure is :mod:`ntkbench.plots.attribution`.

This package imports nothing at import time: import the submodules themselves (e.g.
``from ntkbench.attribution import lds``). So a workflow job that only retrains subsets does
not depend on, and is not rerun for edits of, the attribution methods (code fingerprints,
``ntkbench.provenance``).
"""
