# ttm-experiments. A fresh clone needs only `make train` and `make test`: both set up .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: predict setup train test test-slow lint format compare sweep pretrain inspect ui serve clean tune nested-cv report dashboard bench load chaos zoo

$(STAMP): pyproject.toml setup.py requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned dependencies

train: $(STAMP)  ## one full run on the default config (ARGS='unfreeze.last_n=4 optim.lr=3e-4' to override)
	$(BIN)/ttm-train $(ARGS)

test: $(STAMP)  ## the fast test suite (a few minutes on 2 cores)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)  ## the slow tests only
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)  ## ruff: lint, import order and format check (config in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## ruff: fix import order and format in place
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

sweep: $(STAMP)  ## the default grid: strategy (pattern vs the predecessor's depth rule) x unfreeze.last_n x optim.lr
	$(BIN)/ttm-train -m unfreeze=pattern,depth unfreeze.on_empty=warn unfreeze.last_n=1,2,4 optim.lr=1e-4,1e-3 \
		experiment_name=ttm-sweep $(ARGS)

pretrain: $(STAMP)  ## masked-patch pre-training; writes runs/outputs/<date>/<time>/foundation.pt
	$(BIN)/ttm-train schedule=pretrain $(ARGS)

tune: $(STAMP)  ## an Optuna study (conf/hparams_search/unfreeze_lr.yaml) on one fold; again = more trials in the same study
	$(BIN)/ttm-train -m hparams_search=unfreeze_lr $(ARGS)

N_FOLDS ?= 5
SPACE ?= unfreeze_lr
nested-cv: $(STAMP)  ## nested CV: one study per outer fold (its best trial tested on that fold), then the report (SPACE=unfreeze_lr_inner_cv: inner folds)
	for k in $$(seq 0 $$(($(N_FOLDS) - 1))); do \
		$(BIN)/ttm-train -m hparams_search=$(SPACE) dataset.fold=$$k dataset.n_folds=$(N_FOLDS) $(ARGS) || exit 1; \
	done
	$(BIN)/ttm-report $(REPORT_ARGS)

# a config pair over seeds x folds, then its paired report: the difference and an interval that takes both the
# training seeds and the test subjects into account (e.g. COMPARE=backbone=ttm_1024,baseline_sqi BASELINE=baseline_sqi)
COMPARE ?= schedule=progressive,head_only
BASELINE ?= head_only
SEEDS ?= 0,1,2
FOLDS ?= 0,1,2,3,4
COMPARE_EXPERIMENT ?= compare
compare: $(STAMP)  ## COMPARE=<key>=<a>,<b> over SEEDS x FOLDS (3 x 5), then ttm-report's paired comparison against BASELINE
	$(BIN)/ttm-train -m $(COMPARE) seed=$(SEEDS) dataset.fold=$(FOLDS) experiment_name=$(COMPARE_EXPERIMENT) $(ARGS)
	$(BIN)/ttm-report report.experiment=$(COMPARE_EXPERIMENT) report.compare=$(firstword $(subst =, ,$(COMPARE))) \
		report.baseline=$(BASELINE) $(REPORT_ARGS)

# the model zoo: every backbone family x {linear probe, head only, progressive, full} x label fractions x folds x
# seeds, the SQI baseline on the same folds, then ttm-report's label-efficiency curves and paired tables. Sized for a
# 2-core CPU (ZOO_SIZE: 20 windows per subject, 2 epochs per stage; 216 runs: 29 min with its lines split over two
# processes, trainer.num_threads=1 each, docs/results.md; one after another as here: not timed); offline, the
# pretrained presets start from random weights (ZOO_INIT). Real data: make zoo ARGS='dataset=butppg
# dataset.root=/data/butppg'. Probe-only backbones (frozen features; every other schedule is refused for them) run the
# linear probe alone.
ZOO_BACKBONES ?= ttm_1024,tspulse_r1,mantis_v2
ZOO_PROBE_BACKBONES ?= chronos_bolt_tiny
ZOO_SCHEDULES ?= linear_probe,head_only,progressive,full
ZOO_FRACTIONS ?= 0.1,0.25,0.5,1.0
ZOO_FOLDS ?= 0,1
ZOO_SEEDS ?= 0,1
ZOO_SIZE ?= dataset.windows_per_subject=20 trainer.max_epochs_per_stage=2
ZOO_INIT ?= backbone.pretrained_path=null
ZOO_EXPERIMENT ?= zoo
comma := ,
# the SQI baseline is deterministic (lbfgs ignores the seed): it runs once, at the first seed, and pairs with every seed
zoo: $(STAMP)  ## ZOO_BACKBONES x ZOO_SCHEDULES x ZOO_FRACTIONS x ZOO_FOLDS x ZOO_SEEDS, the SQI baseline, then the zoo report
	$(BIN)/ttm-train -m backbone=baseline_sqi seed=$(firstword $(subst $(comma), ,$(ZOO_SEEDS))) dataset.fold=$(ZOO_FOLDS) \
		dataset.label_fraction=$(ZOO_FRACTIONS) experiment_name=$(ZOO_EXPERIMENT) $(ZOO_SIZE) $(ARGS)
	$(BIN)/ttm-train -m seed=$(ZOO_SEEDS) backbone=$(ZOO_BACKBONES) dataset.fold=$(ZOO_FOLDS) schedule=$(ZOO_SCHEDULES) \
		dataset.label_fraction=$(ZOO_FRACTIONS) experiment_name=$(ZOO_EXPERIMENT) $(ZOO_SIZE) $(ZOO_INIT) $(ARGS)
	$(if $(ZOO_PROBE_BACKBONES),$(BIN)/ttm-train -m seed=$(ZOO_SEEDS) backbone=$(ZOO_PROBE_BACKBONES) \
		dataset.fold=$(ZOO_FOLDS) schedule=linear_probe dataset.label_fraction=$(ZOO_FRACTIONS) \
		experiment_name=$(ZOO_EXPERIMENT) $(ZOO_SIZE) $(ZOO_INIT) $(ARGS))
	$(BIN)/ttm-report report.experiment=$(ZOO_EXPERIMENT) report.zoo=true $(REPORT_ARGS)

report: $(STAMP)  ## table and plots comparing the runs of an MLflow experiment (ARGS='report.sweep=<study or sweep>')
	$(BIN)/ttm-report $(ARGS)

DASHBOARD_PORT ?= 8080
dashboard: $(STAMP)  ## optuna-dashboard on the study storage runs/optuna.db: http://127.0.0.1:8080 (PORT=8081 for another)
	$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dashboard]"
	mkdir -p runs
	$(BIN)/optuna-dashboard sqlite:///runs/optuna.db --host 127.0.0.1 --port $(or $(PORT),$(DASHBOARD_PORT))

inspect: $(STAMP)  ## blocks of the backbone and what unfreezing selects
	$(BIN)/ttm-inspect $(ARGS)

predict: $(STAMP)  ## score recordings with a trained model (ARGS='predict.model=<run id|models:/name/1|best.pt> predict.output=p.csv dataset=butppg dataset.root=...')
	$(BIN)/ttm-predict $(ARGS)

bench: $(STAMP)  ## suite vs bare loop vs transformers.Trainer, start-up, search, scaling; updates BENCHMARKS.md (< 10 min; ARGS=--quick)
	$(BIN)/python bench/bench.py $(ARGS)

load: $(STAMP)  ## 16 processes on a fresh and an initialised SQLite store, 4 Optuna workers, an mlflow server (ARGS='--procs 4')
	$(BIN)/python bench/load.py $(ARGS)

chaos: $(STAMP)  ## SIGKILL runs at 20 random points (seed printed), resume each, compare with uninterrupted runs (ARGS='--kills 6 --seed 1')
	$(BIN)/python bench/chaos.py $(ARGS)

UI_PORT ?= 5000
ui: $(STAMP)  ## MLflow UI on the project's store: http://127.0.0.1:5000 (PORT=5050 for another)
	mkdir -p runs
	@echo "MLflow UI: http://127.0.0.1:$(or $(PORT),$(UI_PORT))/#/?workflowType=machine_learning (the model-training view)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port $(or $(PORT),$(UI_PORT))

# the scoring server starts `uvicorn` by name: the venv's bin goes first on PATH
MODEL ?=
SERVE_PORT ?= 5001
TRACKING_URI ?= sqlite:///runs/mlflow.db
serve: $(STAMP)  ## MODEL=models:/<name>/<version> (or models:/<model_id>): MLflow's scoring server, POST /invocations on 127.0.0.1:5001 (PORT=...)
	@test -n "$(MODEL)" || { echo "error: MODEL is not set. Fix: make serve MODEL=models:/ppg-quality/1 (a registered version, or the model.uri tag of a run)"; exit 2; }
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI=$(TRACKING_URI) $(BIN)/mlflow models serve -m "$(MODEL)" \
		--env-manager local --host 127.0.0.1 --port $(or $(PORT),$(SERVE_PORT))

clean:  ## remove everything runs wrote (keeps .venv)
	find runs -mindepth 1 ! -name README.md -exec rm -rf {} +
