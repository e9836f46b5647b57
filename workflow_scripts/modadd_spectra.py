"""Class-averaged eNTK spectra at every checkpoint (thin entry point)."""
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
from ntkbench.spectral.pipeline import modadd_spectra_stage  # noqa: E402

modadd_spectra_stage(sm.input.checkpoints, sm.params.cfg, sm.params.device, sm.output[0])
