"""Class-averaged eNTK spectra at every checkpoint (thin entry point)."""
from ntkbench.stages.spectral import modadd_spectra_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
modadd_spectra_stage(sm.input.checkpoints, sm.params.cfg, sm.params.device, sm.output[0])
