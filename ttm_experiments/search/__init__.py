"""Hyperparameter search for `ttm-train -m`: the Optuna sweeper, per-epoch pruning, the study's MLflow run.

- `space`: search spaces in the syntax of hydra-optuna-sweeper (interval, tag(log, ...), range, choice);
- `storage`: Optuna storages and pruner specs, shared by the sweeper and the jobs;
- `pruning`: what a training job does with its trial (`epoch_hooks`, `search_tags`);
- `sweeper`: the Hydra sweeper (registered by `hydra_plugins.ttm_optuna_sweeper` as `hydra/sweeper: optuna`);
- `mlflow_study`, `summary`: the study's parent run in MLflow and its result;
- `callbacks`: a Hydra callback that creates the MLflow store before the jobs of any multirun start.

Nothing here is imported by plain runs except `pruning` (and it imports Optuna only inside a study).
"""
