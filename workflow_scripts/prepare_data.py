"""Build the data bundle of one experiment (thin entry point; logic in ntkbench.data)."""
from ntkbench.data import load_dataset, save_bundle
from ntkbench.utils import setup_logging

log = setup_logging(snakemake.log[0])  # noqa: F821 - injected by Snakemake
bundle = load_dataset(snakemake.params.spec, data_dir=snakemake.params.data_dir)  # noqa: F821
log.info("data %s: %d train, %s, %d classes, input shape %s", bundle.meta,
         len(bundle.train), {k: len(s) for k, s in bundle.eval_splits.items()},
         bundle.num_classes, bundle.input_shape)
save_bundle(bundle, snakemake.output[0])  # noqa: F821
