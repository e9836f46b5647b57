"""What each Snakemake rule does: the only layer the workflow calls.

One module per stage family (``train``, ``kernels``, ``surrogates``, ``summary``,
``forensics``, ``spectral``); ``layout`` holds the torch-free helpers the rules need when
the Snakefile is parsed. Every stage function reads its inputs from paths, checks them
before use (a kernel's kind, options and fingerprints; finite, symmetric, normalised values),
works through the library and writes its outputs atomically. Workflow scripts only unpack
``snakemake`` and call one of these functions, so every stage is importable and testable.

This package imports nothing at import time, so ``import ntkbench.stages.layout`` stays
cheap; import the stage modules themselves.
"""
