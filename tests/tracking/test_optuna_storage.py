"""The Optuna storage (ttm_experiments/tracking/optuna_storage.py): one that cannot be opened is one line naming it
(password masked) and the fix, no server needed; pruner specs; a journal file shared by path."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from ttm_experiments.errors import ConfigError
from ttm_experiments.tracking.optuna_storage import normalize_storage, open_storage


def test_unreachable_postgresql_storage_is_one_line_naming_url_and_fix(monkeypatch):
    import optuna

    opened, real = [], optuna.storages.RDBStorage

    def counted(url, **kwargs):  # each attempt to open the storage
        opened.append(url)
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", counted)
    with socket.socket() as s:  # bound for the whole test, never listening: the port is refused and stays ours
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"postgresql://ttm:s3cret@127.0.0.1:{port}/optuna"
        with pytest.raises(ConfigError) as err:
            open_storage(normalize_storage(url))
    assert len(opened) == 1  # refused at once: no retry loop
    text = str(err.value)
    assert "\n" not in text and "s3cret" not in text
    assert f"the Optuna storage postgresql://ttm:***@127.0.0.1:{port}/optuna cannot be opened" in text
    if importlib.util.find_spec("psycopg") is None:
        assert "pip install 'ttm-experiments[postgres]'" in text
    else:
        assert "Connection refused" in text and "start the database server or fix hydra.sweeper.storage" in text


def test_pruner_specs():
    import optuna

    from ttm_experiments.errors import ConfigError
    from ttm_experiments.tracking.optuna_storage import build_pruner, pruner_spec

    assert (
        pruner_spec({"type": "median", "n_startup_trials": 3, "n_warmup_steps": 5})
        == "median:n_startup_trials=3,n_warmup_steps=5"
    )
    assert pruner_spec(None) == "none" and pruner_spec("hyperband") == "hyperband"
    assert pruner_spec({"_target_": "optuna.pruners.MedianPruner"}) == "median"
    assert isinstance(build_pruner("median:n_warmup_steps=5"), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match="unknown pruner 'medain'"):
        pruner_spec("medain")
    with pytest.raises(ConfigError, match="n_warmup"):
        pruner_spec({"type": "median", "n_warmup": 3})


def test_journal_file_storage_is_shared_by_path(tmp_path):
    import optuna

    from ttm_experiments.tracking.optuna_storage import load_study, normalize_storage, open_storage, trial_id

    url = normalize_storage(str(tmp_path / "study.journal"))
    study = optuna.create_study(study_name="j", storage=open_storage(url), direction="maximize")
    number = study.ask().number
    seen = load_study("j", url, "median")  # what a job does, by URL only
    assert isinstance(seen.pruner, optuna.pruners.MedianPruner)
    assert open_storage(url).get_trial(trial_id(url, "j", number)).state.name == "RUNNING"
