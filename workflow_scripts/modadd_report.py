"""CSVs and figures of one modular-addition experiment (thin entry point)."""
from ntkbench.stages.spectral import modadd_report_stage
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
modadd_report_stage(sm.params.seeds, list(sm.input.curves), list(sm.input.spectra), list(sm.input.full),
                    sm.params.cfg, dict(sm.output.items()))
