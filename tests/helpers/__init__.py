"""Shared test helpers, imported as `from tests.helpers.<module> import ...`; the fixtures live in conftest.py.

- configs: compose the real config (train, predict, report) and small backbones built in Python
- data_fixtures: small real-format datasets (BUT-PPG, VitalDB, preprocessed windows)
- smoke_run: the session's trained smoke run (the `smoke_run` fixture) and what tests read from it
- runs: `ttm-train` as a subprocess, and MLflow runs read back from a store
- mlflow_server: a real `mlflow server` on loopback (the `mlflow_server` fixture)
- postgres: a throw-away PostgreSQL server (standard library only: `.ci/run` runs it as a script)
"""
