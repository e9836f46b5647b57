"""CSVs and figures of one modular-addition experiment (thin entry point)."""
from ntkbench.utils import setup_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
setup_logging(sm.log[0], threads=sm.threads)
from ntkbench.spectral.pipeline import modadd_report_stage  # noqa: E402

modadd_report_stage(sm.params.seeds, list(sm.input.curves), list(sm.input.spectra), list(sm.input.full),
                    sm.params.cfg, dict(sm.output.items()))
