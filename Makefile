# Two entry points for a fresh machine: `make run` and `make test`.
# Everything is installed into .venv by the project's own files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= $(shell nproc 2>/dev/null || echo 2)
# Extras of pyproject.toml installed into .venv; CI adds hf (`make test EXTRAS=workflow,test,hf`).
# The stamp is named after them, so that other extras install on the next make.
EXTRAS ?= workflow,test
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# Extras the wheel is installed with in `make wheel-test` (e.g. WHEEL_EXTRAS=hf)
WHEEL_EXTRAS ?=

.PHONY: run test install dry-run bench clean-results report verify wheel-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned, so nothing below can pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole DAG on the embedded default config.yaml (CPU unless CUDA is present);
# settings come from the workflow profile profiles/default.
run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

# A self-contained HTML report of every table and figure (opens offline), from the last run.
report: $(STAMP)
	$(BIN)/snakemake --cores 1 --report results/report.html

# Check every artifact under results/ against its checksum and provenance (the project's scrub);
# lists what is damaged and how to recompute it, deletes nothing. Exit 1 when anything is damaged.
RESULTS ?= results
verify: $(STAMP)
	$(BIN)/python -m ntkbench.stages.verify $(RESULTS)

# Build the wheel, install it into a fresh venv outside the checkout, run ci/wheel/smoke.py there.
wheel-test: $(STAMP)
	WHEEL_EXTRAS="$(WHEEL_EXTRAS)" bash ci/wheel/wheel_test.sh

dry-run: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(CORES) --dist loadfile tests

# The workflow through Snakemake's SLURM executor (profiles/slurm) on a throw-away single-node
# SLURM started on this machine, checked against a local run (ci/cluster/cluster_test.sh).
# Needs root: installs Debian's slurm-wlm and munge, writes /etc/slurm/slurm.conf.
CLUSTER_STAMP := $(VENV)/.installed-cluster-$(subst $(comma),-,$(EXTRAS))

$(CLUSTER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),cluster]"
	touch $(CLUSTER_STAMP)

.PHONY: cluster-test
cluster-test: $(CLUSTER_STAMP)
	bash ci/cluster/slurm.sh install
	bash ci/cluster/cluster_test.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py

# The documentation site (mkdocs.yml, docs/; API reference from the docstrings by mkdocstrings)
# into site/. --strict: a broken link or anchor, a page missing from the nav or a docstring
# warning fails the build. The docs extra is installed into .venv by its own stamp.
DOCS_STAMP := $(VENV)/.installed-docs-$(subst $(comma),-,$(EXTRAS))

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),docs]"
	touch $(DOCS_STAMP)

.PHONY: docs rulegraph
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The picture of the DAG (README, docs/workflow.md): the rule graph of the embedded default
# config.yaml, drawn by graphviz's dot (apt-get install graphviz). Commit the new SVG.
rulegraph: $(STAMP)
	@command -v dot >/dev/null || { echo "make rulegraph needs graphviz's dot (apt-get install graphviz)" >&2; exit 1; }
	$(BIN)/snakemake --rulegraph --nolock > $(VENV)/rulegraph.dot
	dot -Tsvg $(VENV)/rulegraph.dot -o docs/img/rulegraph.svg

clean-results:
	rm -rf results .snakemake
