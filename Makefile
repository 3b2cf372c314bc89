# stockpredict: Slurm job-script toolkit for distributed LSTM training on minute-level S&P 500 data.
# `make help` lists every target. `make test` is exactly what CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
SETUP_DONE := $(VENV)/.setup-done

# TensorFlow build: `cpu` (default) or `gpu` (CUDA build, for GPU clusters).
TF_EXTRA   ?= cpu
# Horovod is compiled against the installed TensorFlow. Any HOROVOD_* variable in your environment
# (e.g. HOROVOD_GPU_OPERATIONS=NCCL, HOROVOD_CUDA_HOME=...) passes through to the build.
HOROVOD_BUILD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
                     HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
SYSTEM_PACKAGES := slurm-wlm munge openmpi-bin libopenmpi-dev cmake g++

# Data and runs.
RAW     ?= data/raw
OUT     ?= data/processed/sequences.h5
DATA    ?= $(OUT)
TICKERS ?= 503
DAYS    ?= 21
SEED    ?= 0
RESULTS ?= results

# Point Slurm clients at the local test cluster when it is running and no SLURM_CONF is set.
LOCAL_SLURM_CONF := $(CURDIR)/.cluster/etc/slurm.conf
ifeq ($(origin SLURM_CONF),undefined)
ifneq ($(wildcard .cluster/run/slurmctld.pid),)
export SLURM_CONF := $(LOCAL_SLURM_CONF)
endif
endif

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# --- environment ---------------------------------------------------------------------------------

.PHONY: system-deps
system-deps: ## Install Slurm, munge, Open MPI, cmake, g++ (apt-get, as root on Debian/Ubuntu)
	@missing=(); \
	for c in slurmctld slurmd munged mpirun mpicxx cmake g++; do command -v $$c >/dev/null || missing+=($$c); done; \
	if (( $${#missing[@]} == 0 )); then echo "system-deps: all present"; exit 0; fi; \
	if [[ $$(id -u) == 0 ]] && command -v apt-get >/dev/null; then \
		echo "system-deps: installing $(SYSTEM_PACKAGES) (missing: $${missing[*]})"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else \
		echo "system-deps: missing $${missing[*]}; install the packages $(SYSTEM_PACKAGES) (as root: apt-get install $(SYSTEM_PACKAGES)), or 'module load' them on your cluster" >&2; exit 1; \
	fi

.PHONY: setup
setup: $(SETUP_DONE) ## Create .venv, install pinned dependencies, build and check Horovod

$(SETUP_DONE): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3 setuptools==84.2.1 wheel==0.48.0
	$(PY) -m pip install -q -c constraints.txt -e '.[$(TF_EXTRA),test]'
	@if ! $(PY) -c 'import horovod.tensorflow' 2>/dev/null; then \
		echo "setup: building horovod 0.28.1 against TensorFlow (about 3 minutes on 2 cores)"; \
		env $(HOROVOD_BUILD_ENV) $(PY) -m pip install -q --no-build-isolation --no-cache-dir \
			-c constraints.txt horovod==0.28.1; \
	fi
	@TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/horovodrun --check-build | tee $(VENV)/horovod-check-build.txt
	@for want in TensorFlow MPI Gloo; do \
		grep -qE "\[X\] $$want" $(VENV)/horovod-check-build.txt \
			|| { echo "setup: horovod was built without $$want (see above)" >&2; exit 1; }; done
	@touch $@
	@echo "setup: done"

# --- local Slurm cluster -------------------------------------------------------------------------

.PHONY: cluster-up cluster-down cluster-status
cluster-up: ## Start the local test cluster: NODES virtual nodes (default 4), 1 fake GPU each
	@bash slurm/local-cluster.sh up $(or $(NODES),4)

cluster-down: ## Stop the daemons the local cluster started
	@bash slurm/local-cluster.sh down

cluster-status: ## Show sinfo and squeue of the local cluster
	@bash slurm/local-cluster.sh status

# --- tests ---------------------------------------------------------------------------------------

.PHONY: test
test: setup ## Run the whole test suite (starts the local cluster itself); what CI runs
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# --- the study -----------------------------------------------------------------------------------

.PHONY: data
data: setup ## Write a synthetic S&P 500 universe [RAW=data/raw TICKERS=503 DAYS=21 SEED=0]
	$(PY) -m preprocess.synthetic --out $(RAW) --tickers $(TICKERS) --days $(DAYS) --seed $(SEED)

.PHONY: preprocess
preprocess: setup ## Raw minute bars -> windowed HDF5 [RAW=data/raw OUT=data/processed/sequences.h5]
	$(PY) -m preprocess --raw $(RAW) --out $(OUT) $(PREPROCESS_ARGS)

# --- training jobs (stockpredict.submit) ---------------------------------------------------------
# NODES, GPUS (per node; 0 = CPU only), EPOCHS, BATCH (per rank), DATA, PROFILE, DRY_RUN=1, TIME.
# Unset variables fall back to the profile's and the trainer's defaults.
SUBMIT_FLAGS = $(if $(NODES),--nodes $(NODES)) $(if $(GPUS),--gpus-per-node $(GPUS)) \
               $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(BATCH),--batch-size $(BATCH)) \
               --data $(DATA) $(if $(PROFILE),--profile $(PROFILE)) $(if $(TIME),--time $(TIME)) \
               $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) --results $(RESULTS)

.PHONY: submit sweep status logs
submit: setup ## Render and sbatch one training job [NODES= GPUS= EPOCHS= BATCH= DATA= PROFILE= DRY_RUN=1]
	@$(PY) -m stockpredict.submit train $(SUBMIT_FLAGS)

sweep: setup ## Submit a scaling grid [NODES_LIST="1 2 4" BATCH_LIST="32 64 128 256" MODE=strong|weak REPEATS=1]
	@$(PY) -m stockpredict.submit sweep $(SUBMIT_FLAGS) --nodes-list "$(or $(NODES_LIST),1 2 4)" \
		--batch-list "$(or $(BATCH_LIST),32 64 128 256)" --mode $(or $(MODE),strong) --repeats $(or $(REPEATS),1)

status: ## Show this toolkit's jobs in the Slurm queue
	@$(PY) -m stockpredict.submit status --results $(RESULTS)

logs: ## Show a run's Slurm output and training log [RUN=<run-id>]
	@$(PY) -m stockpredict.submit logs $(RUN) --results $(RESULTS)

# --- report and demo -----------------------------------------------------------------------------

.PHONY: report demo
report: setup ## Scaling tables (Markdown, CSV) and plots from results/runs/*/timing.jsonl
	$(PY) -m stockpredict.report --runs $(RESULTS)/runs --out $(RESULTS)

demo: setup ## The whole study on this machine: data, preprocess, local cluster, 1/2/4-node sweep, report
	$(PY) -m stockpredict.demo

# --- benchmarks (numbers go in the README; never run by `make test`) -----------------------------

.PHONY: bench-preprocess bench-train
bench-preprocess: setup ## Preprocessing at full S&P scale vs the seed's windowing
	$(PY) benchmarks/bench_preprocess.py

bench-train: setup ## Trainer throughput: HDF5 streaming vs in-memory fit, 1 vs 2 ranks, peak RSS
	$(PY) benchmarks/bench_train.py

.PHONY: clean
clean: ## Remove processed data, the demo's data and run outputs (keeps data/raw, .venv, the cluster)
	rm -rf data/processed data/demo $(RESULTS)/runs $(RESULTS)/jobs $(RESULTS)/scaling.md $(RESULTS)/*.csv $(RESULTS)/*.png
