# Two entry points for a fresh machine: `make run` and `make test`.
# Everything is installed into .venv by the project's own files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= $(shell nproc 2>/dev/null || echo 2)
STAMP  := $(VENV)/.installed

.PHONY: run test install dry-run bench clean-results report verify wheel-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned, so nothing below can pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[workflow,test]"
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
	bash ci/wheel/wheel_test.sh

dry-run: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(CORES) --dist loadfile tests

# The workflow through Snakemake's SLURM executor (profiles/slurm) on a throw-away single-node
# SLURM started on this machine, checked against a local run (ci/cluster/cluster_test.sh).
# Needs root: installs Debian's slurm-wlm and munge, writes /etc/slurm/slurm.conf.
CLUSTER_STAMP := $(VENV)/.installed-cluster

$(CLUSTER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[workflow,test,cluster]"
	touch $(CLUSTER_STAMP)

.PHONY: cluster-test
cluster-test: $(CLUSTER_STAMP)
	bash ci/cluster/slurm.sh install
	bash ci/cluster/cluster_test.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py

clean-results:
	rm -rf results .snakemake
