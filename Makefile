# stockpredict: Slurm job-script toolkit for distributed LSTM training on minute-level S&P 500 data.
# `make help` lists every target. `make test` is exactly what CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
# The training engine: empty or `horovod` (default: Horovod, built in .venv) or `tf` (tf.distribute's
# MultiWorkerMirroredStrategy on TensorFlow 2.21 + tf-keras, in .venv-tf, no Horovod build; see
# docs/training.md, "Engines"). setup, submit, sweep and the other targets then use that environment.
ENGINE     ?=
VENV       ?= $(if $(filter tf,$(ENGINE)),.venv-tf,.venv)
# The setup sentinel: `make setup` runs again when pyproject.toml or constraints.txt are newer.
# SETUP_DONE= (empty) means "use VENV as it is and never run setup": the tests run make this way
# (make ... VENV=<the venv running pytest> SETUP_DONE=), so a test can never reinstall the environment.
SETUP_DONE  = $(VENV)/.setup-done

# TensorFlow build: `cpu` (default) or `gpu` (CUDA build, for GPU clusters).
TF_EXTRA   ?= cpu
# Horovod is compiled against the installed TensorFlow. Any HOROVOD_* variable in your environment
# (e.g. HOROVOD_CUDA_HOME=...) passes through to the build; with TF_EXTRA=gpu, stockpredict/control/nccl.py
# picks NCCL and says which.
SYSTEM_PACKAGES := slurm-wlm munge openmpi-bin libopenmpi-dev cmake g++ slurmdbd mariadb-server

# Data and runs.
RAW     ?= data/raw
SYMBOLS ?=
OUT     ?= data/processed/sequences.h5
DATA    ?= $(OUT)
TICKERS ?= 503
DAYS    ?= 21
SEED    ?= 0
RESULTS ?= results

# --- how user values reach the programs ------------------------------------------------------------
# Every value a user can set (paths, numbers, lists) reaches the programs byte for byte: a path may hold
# spaces, quotes, `;`, `$(...)` or backticks and nothing in it is ever executed. Two rules make this so:
#   1. make never expands a value typed on the command line or taken from the environment: `raw` returns
#      it as typed ($(value ...)); only the Makefile's own defaults (DATA ?= $(OUT)) are expanded.
#      `override` also stops make from exporting (and so expanding) the command-line value itself.
#   2. recipes never paste a value into a shell line: each one is exported as SP_<NAME> (a prefix, so
#      names like TIME or RUN cannot change other programs' behaviour) and read as "$$SP_<NAME>", always
#      in double quotes, passed as --flag="$$SP_X" so a value starting with '-' stays a value.
# The extra-argument lists (PREPROCESS_ARGS, PYTEST_ARGS) are split into words by `words_of` below.
# VENV names a make target too, so it cannot contain spaces (a make limitation).
USER_VARS := PYTHON_SYS ENGINE VENV SETUP_DONE TF_EXTRA RAW OUT DATA TICKERS DAYS SEED RESULTS NODES GPUS EPOCHS \
             BATCH PROFILE TIME DRY_RUN NODES_LIST BATCH_LIST MODE REPEATS RUN PREPROCESS_ARGS PYTEST_ARGS \
             SYMBOLS DATASET NETWORK PRICE PRICE_UNIT TARGET_EPOCHS TIMELINE TIMELINE_STEPS ITERATIONS \
             ALL PREDICT_ARGS THREADS AGAINST
# The requeue signal; the dependency chain of submit, sweep and report.
USER_VARS += SIGNAL AFTER AFTER_KIND ARRAY ARRAY_MAX
# make study: FORCE=1 rebuilds DATA from RAW (and retrains every run).
USER_VARS += FORCE
# submit, sweep, study: seconds without a step, while a rank stopped answering, before the job ends
# (the trainer's --stall-timeout; default the profile's stall_timeout, else 300; 0: off).
USER_VARS += STALL_TIMEOUT
# `make predict` writes predictions.csv unless OUT is given (OUT's own default names the HDF5 file);
# read before the line below turns OUT's origin into "override".
OUT_GIVEN := $(filter command environment,$(origin OUT))
# `make study` preprocesses only when RAW is given (RAW's default is where `make data` writes).
RAW_GIVEN := $(filter command environment,$(origin RAW))
raw = $(if $(filter command environment,$(origin $(1))),$(value $(1)),$($(1)))
$(foreach v,$(USER_VARS),$(eval override $(v) := $$(call raw,$(v))))
$(foreach v,$(USER_VARS),$(eval export SP_$(v) := $$($(v))))
PY := $(VENV)/bin/python
override PY := $(call raw,PY)
export SP_PY := $(PY)

# $(call words_of,NAME,array): the words of $$SP_NAME in the bash array `array`, split as the shell splits
# words ('a b' and "a b" stay one word) by xargs, which expands and executes nothing; a stray quote fails.
words_of = mapfile -d '' $(2) < <(printf '%s' "$$SP_$(1)" | xargs -r printf '%s\0'); wait $$!
# $(show) prog args...: print the command with its arguments shell-quoted (as the program receives
# them), then run it. The recipes using it start with @, so this line replaces make's own echo.
show = show() { local q; q=$$(printf '%q ' "$$@"); echo "$${q% }"; "$$@"; }; show

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
system-deps: ## Install Slurm, munge, Open MPI, cmake, g++, slurmdbd + MariaDB (accounting) (apt-get, as root on Debian/Ubuntu)
	@missing=(); \
	for c in slurmctld slurmd munged mpirun mpicxx cmake g++ slurmdbd mariadbd; do command -v $$c >/dev/null || missing+=($$c); done; \
	if (( $${#missing[@]} == 0 )); then echo "system-deps: all present"; exit 0; fi; \
	if [[ $$(id -u) == 0 ]] && command -v apt-get >/dev/null; then \
		echo "system-deps: installing $(SYSTEM_PACKAGES) (missing: $${missing[*]})"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else \
		echo "system-deps: missing $${missing[*]}; install the packages $(SYSTEM_PACKAGES) (as root: apt-get install $(SYSTEM_PACKAGES)), or 'module load' them on your cluster" >&2; exit 1; \
	fi

.PHONY: setup setup-tf
setup: $(SETUP_DONE) ## Create .venv, install pinned dependencies, build and check Horovod [ENGINE=tf: .venv-tf]

# The recipe is one program (stockpredict/control/install.py, standard library only, run by the system
# Python before the venv exists): venv, pinned packages, and for Horovod the compiled wheel with its build
# cache and NCCL choice. The tf engine's stack (constraints-tf.txt: TensorFlow 2.21, tf-keras 2.21) is
# pip wheels only. `python3 -m stockpredict.control.install --dry-run ...` prints what it would run.
ifneq ($(SETUP_DONE),)
$(SETUP_DONE): pyproject.toml $(if $(filter tf,$(ENGINE)),constraints-tf.txt,constraints.txt)
	@$(if $(filter tf,$(ENGINE)),,$(MAKE) --no-print-directory system-deps)
	@"$$SP_PYTHON_SYS" -m stockpredict.control.install --engine="$(if $(filter tf,$(ENGINE)),tf,horovod)" \
		--venv="$$SP_VENV" --tf-extra="$$SP_TF_EXTRA" --python="$$SP_PYTHON_SYS"
	@touch "$$SP_SETUP_DONE"
endif

# `make test` covers both engines, so it builds .venv-tf too (once; it is reused like .venv).
setup-tf: ## Create .venv-tf for the tf engine (same as make setup ENGINE=tf)
	@$(MAKE) --no-print-directory setup ENGINE=tf VENV=.venv-tf

# --- local Slurm cluster -------------------------------------------------------------------------

.PHONY: cluster-up cluster-down cluster-status
cluster-up: ## Start the local test cluster: NODES virtual nodes (default 4), 1 fake GPU each
	@bash slurm/local-cluster.sh up "$${SP_NODES:-4}"

cluster-down: ## Stop the daemons the local cluster started
	@bash slurm/local-cluster.sh down

cluster-status: ## Show sinfo and squeue of the local cluster
	@bash slurm/local-cluster.sh status

# --- tests ---------------------------------------------------------------------------------------

.PHONY: test test-fast lint
# `make test-fast` (no cluster) runs on two pytest-xdist workers. `make test` stays in one process: the
# local cluster's tests must not run side by side, and pytest-xdist 3.8's --dist loadgroup, which would
# keep them on one worker, does not work under pytest 9 (tests/conftest.py, slurm_cluster).
PYTEST_WORKERS := -n 2
test: setup setup-tf lint ## Lint, then the whole test suite, both engines (starts the local cluster itself); what CI runs
	@$(call words_of,PYTEST_ARGS,args); export STOCKPREDICT_HYPOTHESIS=full; $(show) "$$SP_VENV/bin/pytest" "$${args[@]}"

test-fast: setup ## The suite without the cluster and slow tests: the edit-test loop [PYTEST_ARGS=]
	@$(call words_of,PYTEST_ARGS,args); $(show) "$$SP_VENV/bin/pytest" $(PYTEST_WORKERS) -m "not cluster and not slow" "$${args[@]}"

# Run first by `make test` (and so by CI): a lint failure stops the suite before it starts.
lint: setup ## ruff, then the architecture contracts with import-linter (both configured in pyproject.toml)
	@$(show) "$$SP_VENV/bin/ruff" check .
	@$(show) "$$SP_VENV/bin/lint-imports" --no-cache

# --- the study -----------------------------------------------------------------------------------

.PHONY: data
data: setup ## Write a synthetic S&P 500 universe [RAW=data/raw TICKERS=503 DAYS=21 SEED=0]
	@$(show) "$$SP_PY" -m preprocess.synthetic --out="$$SP_RAW" --tickers="$$SP_TICKERS" --days="$$SP_DAYS" \
		--seed="$$SP_SEED"

.PHONY: preprocess
preprocess: setup ## Raw minute bars -> windowed HDF5 [RAW=data/raw OUT=data/processed/sequences.h5]
	@$(call words_of,PREPROCESS_ARGS,extra); \
	$(show) "$$SP_PY" -m preprocess --raw="$$SP_RAW" --out="$$SP_OUT" "$${extra[@]}"

.PHONY: download
download: setup ## Yahoo Finance 1-minute bars into RAW [SYMBOLS="AAPL MSFT" or SYMBOLS=sp500 DAYS=21 RAW=data/raw]
	@$(show) "$$SP_PY" -m preprocess.download --symbols="$$SP_SYMBOLS" --days="$$SP_DAYS" --out="$$SP_RAW"

# Forecasts from a finished run: RUN is a run directory or a run id under RESULTS/runs; RAW fresh bars in any
# format preprocessing reads; ALL=1 every window instead of the latest per ticker; PREDICT_ARGS extra flags.
.PHONY: predict
predict: setup ## Forecasts of a trained run on fresh bars [RUN= RAW= OUT=predictions.csv ALL=1 PREDICT_ARGS=]
	@$(call words_of,PREDICT_ARGS,extra); run="$$SP_RUN"; \
	if [[ -z "$$run" ]]; then echo "predict: set RUN= to a run directory or a run id under $$SP_RESULTS/runs" >&2; exit 2; fi; \
	if [[ ! -d "$$run" && -d "$$SP_RESULTS/runs/$$run" ]]; then run="$$SP_RESULTS/runs/$$run"; fi; \
	$(if $(filter 1 yes true,$(ALL)),extra+=(--all);) \
	$(show) "$$SP_PY" -m stockpredict.predict --run="$$run" --raw="$$SP_RAW" \
		--out="$(if $(OUT_GIVEN),$$SP_OUT,predictions.csv)" "$${extra[@]}"

# --- training jobs (stockpredict.submit) ---------------------------------------------------------
# NODES, GPUS (per node; 0 = CPU only), EPOCHS, BATCH (per rank), DATA, PROFILE, DRY_RUN=1, TIME, ENGINE.
# Unset variables fall back to the profile's and the trainer's defaults. SUBMIT_FLAGS is shell code that
# fills the bash array `flags` from the SP_* variables (see "how user values reach the programs").
flag = [[ -z "$$SP_$(1)" ]] || flags+=("$(2)=$$SP_$(1)");
SUBMIT_FLAGS = flags=(); $(call flag,NODES,--nodes) $(call flag,GPUS,--gpus-per-node) \
               $(call flag,EPOCHS,--epochs) $(call flag,BATCH,--batch-size) flags+=("--data=$$SP_DATA"); \
               $(call flag,ENGINE,--engine) \
               $(call flag,PROFILE,--profile) $(call flag,TIME,--time) \
               $(call flag,SIGNAL,--requeue-signal) $(call flag,STALL_TIMEOUT,--stall-timeout) \
               $(call flag,AFTER,--after) $(call flag,AFTER_KIND,--after-kind) \
               $(if $(filter 1 yes true,$(TIMELINE)),flags+=(--timeline "--max-steps=$${SP_TIMELINE_STEPS:-200}");) \
               $(if $(filter 1 yes true,$(DRY_RUN)),flags+=(--dry-run);) flags+=("--results=$$SP_RESULTS")

.PHONY: submit sweep allreduce-bench status logs
submit: setup ## Render and sbatch one training job [NODES= GPUS= EPOCHS= BATCH= DATA= PROFILE= DRY_RUN=1 TIMELINE=1 ENGINE=tf SIGNAL=USR2|USR1 STALL_TIMEOUT=<s> AFTER=<id>[:<id>] AFTER_KIND=afterok|afterany|afternotok]
	@$(SUBMIT_FLAGS); "$$SP_PY" -m stockpredict.submit train "$${flags[@]}"

sweep: setup ## Submit a scaling grid, one job array per node count [NODES_LIST="1 2 4" BATCH_LIST="32 64 128 256" MODE=strong|weak REPEATS=1 ARRAY_MAX= ARRAY=0 AFTER=]
	@$(SUBMIT_FLAGS); "$$SP_PY" -m stockpredict.submit sweep "$${flags[@]}" \
		--nodes-list="$${SP_NODES_LIST:-1 2 4}" --batch-list="$${SP_BATCH_LIST:-32 64 128 256}" \
		--mode="$${SP_MODE:-strong}" --repeats="$${SP_REPEATS:-1}" \
		$${SP_ARRAY_MAX:+--array-max="$$SP_ARRAY_MAX"} $(if $(filter 0 no false,$(ARRAY)),--no-array)

# A whole study as one chain of jobs (stockpredict/control/study.py): preprocessing when RAW is given (and
# DATA does not exist yet, or FORCE=1), the sweep's arrays after it, the report after them. Returns at once;
# `make status` follows it. A re-run skips the runs that completed. Takes the sweep's and the report's variables.
.PHONY: study
study: setup ## Preprocess (RAW=), sweep, then report, as one chain of jobs [RAW= DATA= NODES_LIST= BATCH_LIST= REPEATS= EPOCHS= ARRAY_MAX= FORCE=1 NETWORK= PRICE=]
	@$(SUBMIT_FLAGS); $(call words_of,PREPROCESS_ARGS,prep); \
	for word in "$${prep[@]}"; do flags+=("--preprocess-arg=$$word"); done; \
	args=(--dataset="$$SP_DATASET" --network="$$SP_NETWORK" --price-per-hour="$$SP_PRICE" \
		--price-unit="$${SP_PRICE_UNIT:-gpu}" --target-epochs="$$SP_TARGET_EPOCHS" --profile="$$SP_PROFILE"); \
	"$$SP_PY" -m stockpredict.submit study "$${flags[@]}" \
		--nodes-list="$${SP_NODES_LIST:-1 2 4}" --batch-list="$${SP_BATCH_LIST:-32 64 128 256}" \
		--mode="$${SP_MODE:-strong}" --repeats="$${SP_REPEATS:-1}" \
		$${SP_ARRAY_MAX:+--array-max="$$SP_ARRAY_MAX"} $(if $(RAW_GIVEN),--raw="$$SP_RAW") \
		$(if $(filter 1 yes true,$(FORCE)),--force) -- "$${args[@]}"

# The allreduce microbenchmark as a run in RESULTS/runs/ (make report fits it): NODES (default 2), GPUS,
# ITERATIONS (allreduces per epoch), EPOCHS (the first is warm-up), DATA (sizes the gradients), PROFILE.
allreduce-bench: setup ## Submit the allreduce benchmark [NODES=2 ITERATIONS=200 EPOCHS=3 DATA= DRY_RUN=1]
	@flags=("--nodes=$${SP_NODES:-2}"); $(call flag,GPUS,--gpus-per-node) $(call flag,ITERATIONS,--iterations) \
		$(call flag,EPOCHS,--epochs) flags+=("--data=$$SP_DATA"); $(call flag,PROFILE,--profile) \
		$(call flag,TIME,--time) $(if $(filter 1 yes true,$(DRY_RUN)),flags+=(--dry-run);) \
		flags+=("--results=$$SP_RESULTS"); "$$SP_PY" -m stockpredict.submit allreduce "$${flags[@]}"

# GPU preflight: a short 1-node job printing, per engine, the GPUs TensorFlow sees, whether the LSTM runs
# cuDNN, the NCCL build, and a 2-GPU allreduce time (GPUS=2). Each missing piece: one line naming the fix.
.PHONY: gpu-check
gpu-check: setup ## Submit the GPU preflight job of both engines [PROFILE=mysite GPUS= TIME= DRY_RUN=1]
	@flags=(); $(call flag,PROFILE,--profile) $(call flag,GPUS,--gpus-per-node) $(call flag,TIME,--time) \
	$(call flag,ENGINE,--engine) $(if $(filter 1 yes true,$(DRY_RUN)),flags+=(--dry-run);) \
	"$$SP_PY" -m stockpredict.submit gpu-check "$${flags[@]}" --results="$$SP_RESULTS"

status: ## Show this toolkit's jobs (sacct: also finished ones; else the queue) (found by the job ids in RESULTS), and the latest study's stages
	@"$$SP_PY" -m stockpredict.submit status --results="$$SP_RESULTS"

logs: ## Show a run's Slurm output and training log [RUN=<run-id>]
	@"$$SP_PY" -m stockpredict.submit logs --results="$$SP_RESULTS" $${SP_RUN:+-- "$$SP_RUN"}

# --- report and demo -----------------------------------------------------------------------------

.PHONY: report demo
# With AFTER=<id>[:<id>...] the report is not built here but submitted as a one-process job that starts
# after those jobs (AFTER_KIND, default afterok; afterany builds it even if some runs failed).
report: setup ## Tables, plots, scaling model [DATASET=name|prefix NETWORK=ib-hdr PRICE=2.5 PRICE_UNIT=gpu|node TARGET_EPOCHS= AFTER=<id>[:<id>] AFTER_KIND=]
	@args=(--dataset="$$SP_DATASET" --network="$$SP_NETWORK" --price-per-hour="$$SP_PRICE" \
		--price-unit="$${SP_PRICE_UNIT:-gpu}" --target-epochs="$$SP_TARGET_EPOCHS" --profile="$$SP_PROFILE"); \
	if [[ -n "$$SP_AFTER" ]]; then \
		flags=(); $(call flag,PROFILE,--profile) $(call flag,TIME,--time) $(call flag,AFTER_KIND,--after-kind) \
		$(if $(filter 1 yes true,$(DRY_RUN)),flags+=(--dry-run);) \
		"$$SP_PY" -m stockpredict.submit report --runs="$$SP_RESULTS/runs" --out="$$SP_RESULTS" \
			--results="$$SP_RESULTS" --after="$$SP_AFTER" "$${flags[@]}" -- "$${args[@]}"; \
	else \
		$(show) "$$SP_PY" -m stockpredict.report --runs="$$SP_RESULTS/runs" --out="$$SP_RESULTS" "$${args[@]}"; \
	fi

demo: setup ## The whole study on this machine: data, preprocess, local cluster, 1/2/4-node sweep, report
	@$(show) "$$SP_PY" -m stockpredict.demo

# --- benchmarks (numbers go in the README; never run by `make test`) -----------------------------

.PHONY: bench-preprocess bench-train bench-reader
bench-preprocess: setup ## Preprocessing at full S&P scale vs the seed's windowing
	@$(show) "$$SP_PY" benchmarks/bench_preprocess.py

# One rank's shard for one epoch through the reader API (any schema); last line `reader: <N> windows/s
# (batch <B>, <T> thread(s), schema <S>)`. AGAINST=<schema-2 file> also times schema 2's block reader.
bench-reader: setup ## Reader windows/s of one rank's shard [DATA= BATCH=256 THREADS=1 AGAINST=]
	@flags=("--data=$$SP_DATA" "--batch=$${SP_BATCH:-256}" "--threads=$${SP_THREADS:-1}"); \
		$(if $(AGAINST),flags+=("--against=$$SP_AGAINST");) \
		$(show) "$$SP_PY" benchmarks/bench_reader.py "$${flags[@]}"

bench-train: setup ## Trainer throughput: HDF5 streaming vs in-memory fit, 1 vs 2 ranks, peak RSS
	@$(show) "$$SP_PY" benchmarks/bench_train.py

.PHONY: clean
clean: ## Remove processed data, the demo's data and run outputs (keeps data/raw, .venv, the cluster)
	@$(show) rm -rf -- data/processed data/demo
	@"$$SP_PYTHON_SYS" -m stockpredict.common.rundir clean "$$SP_RESULTS"
