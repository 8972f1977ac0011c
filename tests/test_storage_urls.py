"""An Optuna storage that cannot be opened is one line naming it (password masked) and the fix; no server needed."""

from __future__ import annotations

import importlib.util
import socket
import time

import pytest

from ttm_experiments.errors import ConfigError
from ttm_experiments.tracking.optuna_storage import normalize_storage, open_storage


def test_unreachable_postgresql_storage_is_one_line_naming_url_and_fix():
    import optuna  # noqa: F401  (imported before the clock starts: it takes seconds on a busy machine)

    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://ttm:s3cret@127.0.0.1:{port}/optuna"
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        open_storage(normalize_storage(url))
    assert time.perf_counter() - t0 < 30  # refused at once (the rest is importing the driver), no retry loop
    text = str(err.value)
    assert "\n" not in text and "s3cret" not in text
    assert f"the Optuna storage postgresql://ttm:***@127.0.0.1:{port}/optuna cannot be opened" in text
    if importlib.util.find_spec("psycopg") is None:
        assert "pip install 'ttm-experiments[postgres]'" in text
    else:
        assert "Connection refused" in text and "start the database server or fix hydra.sweeper.storage" in text
