"""Hyperparameter search for `ttm-train -m`: the Optuna sweeper, per-epoch pruning, the study's MLflow run.

- `space`: search spaces in the syntax of hydra-optuna-sweeper (interval, tag(log, ...), range, choice);
- `sweeper`: the Hydra sweeper's loop (registered by `hydra_plugins.ttm_optuna_sweeper` as `hydra/sweeper: optuna`):
  check the space, create or resume the study, ask, launch, tell;
- `trials`: trial bookkeeping (final states, failure reasons, one line per trial);
- `best`: the end of a study (the best trial as a checked command, results, the study's MLflow run);
- `adopt`: trials a dead sweeper left RUNNING, and per-trial sampler seeds;
- `nested`: a study bound to its outer fold;
- `mlflow_study`, `summary`: the study's parent run in MLflow and its result;
- `callbacks`: a Hydra callback that creates the MLflow store before the jobs of any multirun start.

Plain runs import nothing from here: the job's side of a trial (report each epoch, prune) is `training/trial.py`,
the Optuna storage helpers are `tracking/optuna_storage.py`.
"""
