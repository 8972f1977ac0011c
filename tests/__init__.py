"""The tests, laid out as the package: tests/<part>/ tests ttm_experiments/<part>/ (cli, config, data, metrics,
models, report, search, tracking, training, utils); tests/e2e/ holds whole runs and whole set-ups (a killed run
resumed, a wheel installed, PostgreSQL and `mlflow server`). Shared fixtures: tests/conftest.py; shared helpers:
tests/helpers/. `make test` runs the fast tests, `make test-slow` those marked slow."""
