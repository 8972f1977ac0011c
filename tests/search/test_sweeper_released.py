"""The sweeper for any Hydra app, held to the released `hydra-optuna-sweeper` 1.3's documented behaviour.

Each test writes a small Hydra app into a temporary folder, with the behaviour and configs of the released
plugin's example apps (`example/sphere.py` and `conf/config.yaml`, the grid and deprecated-`search_space`
configs of its tests, `multi-objective.py`, `custom-search-space-objective.py`), and runs it as its own process
through this sweeper (`hydra/sweeper: optuna` resolves to it: nothing else provides it here). What is asserted
is what the released plugin's tests and docs state: the results file, the study's trials, the warnings, the
failure rate. Studies that the test reads back live in a SQLite file in the tmp dir (the released default is in
memory, which one test checks by the absence of any file).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from tests.helpers.configs import REPO

SPHERE = """\
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg: DictConfig) -> float:
    x: float = cfg.x
    y: float = cfg.y
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return x**2 + y**2


if __name__ == "__main__":
    sphere()
"""

SPHERE_CONFIG = """\
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: tpe

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    max_failure_rate: 0.0
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5 ,0 ,5)

x: 1
y: 1
z: 1

# if true, simulate a failure by raising an exception
error: false
"""

GRID_CONFIG = """\
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: grid

hydra:
  sweeper:
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      x: choice(-1, 1)
      y: range(-1.0, 1.0, step=1)
      z: choice("foo", "bar")

x: 1
y: 1
z: foo
"""

DEPRECATED_CONFIG = """\
defaults:
  - override hydra/sweeper: optuna

hydra:
  sweeper:
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    search_space:
      x:
        type: float
        low: -5.5
        high: 5.5
        step: 0.5

x: 1
y: 1
z: foo
"""

MULTI = """\
from typing import Tuple

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="multi-objective-conf", config_name="config")
def binh_and_korn(cfg: DictConfig) -> Tuple[float, float]:
    x: float = cfg.x
    y: float = cfg.y
    v0 = 4 * x**2 + 4 * y**2
    v1 = (x - 5) ** 2 + (y - 5) ** 2
    return v0, v1


if __name__ == "__main__":
    binh_and_korn()
"""

MULTI_CONFIG = """\
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: nsgaii

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: [minimize, minimize]
    study_name: multi-objective
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      x: range(0, 5, step=0.5)
      y: range(0, 3, step=0.5)

x: 1
y: 1
"""

CUSTOM = """\
import hydra
from omegaconf import DictConfig
from optuna.trial import Trial


@hydra.main(version_base=None, config_path="custom-search-space", config_name="config")
def multi_dimensional_sphere(cfg: DictConfig) -> float:
    return cfg.w**2 + cfg.x**2 + cfg.y**2 + cfg.z**2


def configure(cfg: DictConfig, trial: Trial) -> None:
    x_value = trial.params["x"]
    trial.suggest_float("z", x_value - cfg.max_z_difference_from_x, x_value + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)  # +w: w is a new key


if __name__ == "__main__":
    multi_dimensional_sphere()
"""

CUSTOM_CONFIG = """\
defaults:
  - override hydra/sweeper: optuna

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: custom-search-space
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      x: range(-5.5, 5.5, 0.5)
      y: choice(-5, 0, 5)
    custom_search_space: custom-search-space-objective.configure

x: 1
y: 1
z: 100
max_z_difference_from_x: 0.5
"""


def write_app(folder: Path, script: str, text: str, conf_dir: str, configs: dict[str, str]) -> Path:
    (folder / conf_dir).mkdir(parents=True, exist_ok=True)
    for name, body in configs.items():
        (folder / conf_dir / f"{name}.yaml").write_text(body)
    path = folder / script
    path.write_text(text)
    return path


def run_app(script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The app as its own process, from its folder, with this repository's venv (which holds the sweeper)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, script.name, "--multirun", *args],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, f"{script.name} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def sphere_app(tmp_path: Path, config: str = SPHERE_CONFIG, name: str = "config") -> Path:
    return write_app(tmp_path / "app", "sphere.py", SPHERE, "conf", {name: config})


def storage_args(tmp_path: Path, study: str) -> tuple[str, list[str]]:
    url = f"sqlite:///{tmp_path}/test.db"
    return url, [f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={study}"]


def results(sweep_dir: Path):
    return OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))


@pytest.mark.slow  # 20 trials of TPE: over 10 s on a loaded machine
@pytest.mark.parametrize("with_commandline", [True, False])
def test_sphere_example(tmp_path, with_commandline):
    """The released test_optuna_example: TPE seed 123, 20 trials; a fixed command-line value is no parameter."""
    app = sphere_app(tmp_path)
    url, store = storage_args(tmp_path, "test-optuna-example")
    sweep = tmp_path / "sweep"
    args = [f"hydra.sweep.dir={sweep}", "hydra.job.chdir=True", "hydra.sweeper.n_trials=20", "hydra.sweeper.n_jobs=1"]
    args += [*store, "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z"]
    if with_commandline:
        args += ["x=choice(0, 1, 2)", "y=0"]
    proc = run_app(app, *args)
    out = results(sweep)
    study = optuna.load_study(storage=url, study_name="test-optuna-example")
    best = study.best_trial
    assert set(out) == {"name", "best_params", "best_value"}  # what the released plugin writes, nothing else
    assert out["name"] == "optuna"
    assert out["best_params"] == best.params and out["best_value"] == best.value
    assert len(study.trials) == 20 and study.direction.name == "MINIMIZE"
    if with_commandline:
        assert set(best.params) == {"x"} and {t.params["x"] for t in study.trials} <= {0, 1, 2}
        assert all(t.user_attrs["y"] == "0" for t in study.trials)  # fixed values: user attributes of each trial
    else:
        assert set(best.params) == {"x", "y"}
        xs = {t.params["x"] for t in study.trials}
        assert all(isinstance(x, float) and (x * 2) % 1 == 0 and -5.5 <= x <= 5.5 for x in xs)
    # the released test's bound: the 95th percentile of the best value over 1000 seeds of TPE
    assert out["best_value"] <= 2.27
    # the best trial as a command of this app (not ttm-train), with the fixed overrides
    line = next(ln for ln in proc.stdout.splitlines() if "reproduce it:" in ln)
    assert shlex.split(line.split("reproduce it:")[1])[:3] == ["python", "sphere.py", "~z"]
    assert "ttm-train" not in proc.stdout


def test_released_defaults_and_sampler_arguments(tmp_path):
    """Without direction, storage or max_failure_rate the released defaults hold: minimize, an in-memory study
    (no file anywhere), n_jobs 2, failure rate 0.0; the sampler node takes its constructor's arguments."""
    config = SPHERE_CONFIG.replace("    direction: minimize\n", "").replace("    n_jobs: 1\n", "")
    config = config.replace("    max_failure_rate: 0.0\n", "")
    app = sphere_app(tmp_path, config)
    shown = subprocess.run(
        [sys.executable, app.name, "--cfg", "hydra", "--package", "hydra.sweeper"],
        cwd=app.parent,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
    ).stdout
    node = OmegaConf.create(shown)
    assert node.direction == "minimize" and node.storage is None and node.n_jobs == 2
    assert node.max_failure_rate == 0.0 and node.n_trials == 20 and node.custom_search_space is None
    assert node.sampler.n_startup_trials == 10 and node.sampler.multivariate is False
    assert node.trial_node is None and node.pruner is None  # this sweeper's additions stay off
    sweep = tmp_path / "sweep"
    proc = run_app(
        app, f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.n_startup_trials=2"
    )
    assert "(in memory)" in proc.stdout
    assert "Launching 2 jobs" in proc.stdout  # n_jobs 2: trials go to the launcher two at a time
    assert not list(tmp_path.rglob("*.db")) and not list(tmp_path.rglob("*.journal"))
    out = results(sweep)
    assert out["best_value"] == min(x**2 + y**2 for x, y in _trial_points(proc.stdout))
    bad = run_app(app, f"hydra.sweep.dir={sweep}", "hydra.sweeper.sampler.n_startup_trial=2", check=False)
    assert bad.returncode != 0 and "n_startup_trial" in bad.stderr  # a misspelt argument is refused


def _trial_points(stdout: str) -> list[tuple[float, float]]:
    """The (x, y) of each trial line (`trial 3 COMPLETE objective 2.25 | x=1.5 y=0`)."""
    points = []
    for line in stdout.splitlines():
        if " COMPLETE " in line and "| x=" in line:
            params = dict(p.split("=") for p in line.split("| ")[1].split())
            points.append((float(params["x"]), float(params["y"])))
    return points


def test_a_direction_left_out_minimizes(tmp_path):
    config = SPHERE_CONFIG.replace("    direction: minimize\n", "")
    app = sphere_app(tmp_path, config)
    url, store = storage_args(tmp_path, "s")
    run_app(app, f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=3", *store)
    assert optuna.load_study(storage=url, study_name="s").direction.name == "MINIMIZE"


@pytest.mark.parametrize("num_trials", [10, 1])
def test_grid_example(tmp_path, num_trials):
    """The released test_example_with_grid_sampler: `range(-1.0, 1.0, step=1)` is the grid -1.0, 0.0 (the stop
    excluded), so the grid has 2 x 2 x 2 = 8 points and n_trials is at most 8."""
    app = sphere_app(tmp_path, GRID_CONFIG, name="test_grid")
    url, store = storage_args(tmp_path, "test-grid-sampler")
    sweep = tmp_path / "sweep"
    run_app(
        app,
        "--config-name=test_grid",
        f"hydra.sweep.dir={sweep}",
        "hydra.job.chdir=False",
        f"hydra.sweeper.n_trials={num_trials}",
        "hydra.sweeper.n_jobs=1",
        *store,
    )
    out = results(sweep)
    trials = optuna.load_study(storage=url, study_name="test-grid-sampler").trials
    assert len(trials) == min(num_trials, 8)
    assert {t.params["y"] for t in trials} <= {-1.0, 0.0}
    if num_trials >= 8:
        points = {(t.params["x"], t.params["y"], t.params["z"]) for t in trials}
        assert len(points) == 8  # every grid point once
        assert out["best_value"] == 1 and abs(out["best_params"]["x"]) == 1 and out["best_params"]["y"] == 0
    assert out["best_params"]["x"] in [-1, 1] and out["best_params"]["y"] in [-1, 0]
    assert out["best_params"]["z"] in ["foo", "bar"]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


@pytest.mark.slow  # 20 trials: over 10 s on a loaded machine
@pytest.mark.parametrize("with_commandline", [True, False])
def test_multi_objective_example(tmp_path, with_commandline):
    """The released test_optuna_multi_objective_example: a list of directions, the job returns a tuple, the
    results are the Pareto front's `solutions`."""
    app = write_app(tmp_path / "app", "multi-objective.py", MULTI, "multi-objective-conf", {"config": MULTI_CONFIG})
    url, store = storage_args(tmp_path, "mo")
    sweep = tmp_path / "sweep"
    args = [f"hydra.sweep.dir={sweep}", "hydra.job.chdir=True", "hydra.sweeper.n_trials=20", "hydra.sweeper.n_jobs=1"]
    args += [*store, "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123"]
    if with_commandline:
        args += ["x=range(0, 5)", "y=range(0, 3)"]
    run_app(app, *args)
    out = results(sweep)
    assert set(out) == {"name", "solutions"} and out["name"] == "optuna"
    study = optuna.load_study(storage=url, study_name="mo")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert len(out["solutions"]) == len(study.best_trials) > 0
    for s in out["solutions"]:
        x, y = s["params"]["x"], s["params"]["y"]
        assert s["values"] == pytest.approx([4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2])
        assert (x % 1 == 0 and y % 1 == 0) if with_commandline else (x % 1 in {0, 0.5} and y % 1 in {0, 0.5})
        assert not any(_dominates(o["values"], s["values"]) for o in out["solutions"])
    # the front is the study's: no complete trial dominates a solution
    for s in out["solutions"]:
        assert not any(_dominates(t.values, s["values"]) for t in study.trials if t.state.name == "COMPLETE")


def test_custom_search_space_example(tmp_path):
    """The released test_optuna_custom_search_space_example: a function adds `z` (near x) and a new key `+w`."""
    app = write_app(
        tmp_path / "app", "custom-search-space-objective.py", CUSTOM, "custom-search-space", {"config": CUSTOM_CONFIG}
    )
    sweep = tmp_path / "sweep"
    run_app(
        app,
        f"hydra.sweep.dir={sweep}",
        "hydra.job.chdir=True",
        "hydra.sweeper.n_trials=20",
        "hydra.sweeper.n_jobs=1",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=123",
        "max_z_difference_from_x=0.3",
    )
    out = results(sweep)
    assert out["name"] == "optuna"
    assert abs(out["best_params"]["x"] - out["best_params"]["z"]) <= 0.3
    assert 0 <= out["best_params"]["+w"] <= 1
    w, x, y, z = (out["best_params"][k] for k in ("+w", "x", "y", "z"))
    assert out["best_value"] == pytest.approx(w**2 + x**2 + y**2 + z**2)  # the job got every suggested value


def test_deprecated_search_space_example_warns_and_runs(tmp_path):
    """The released test_example_with_deprecated_search_space, and its deprecation warning."""
    app = sphere_app(tmp_path, DEPRECATED_CONFIG, name="test_deprecated_search_space")
    sweep = tmp_path / "sweep"
    proc = run_app(
        app,
        "--config-name=test_deprecated_search_space",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=1",
    )
    assert "`hydra.sweeper.search_space` is deprecated and will be removed in the next major release" in proc.stderr
    out = results(sweep)
    assert abs(out["best_params"]["x"]) <= 5.5 and (out["best_params"]["x"] * 2) % 1 == 0


@pytest.mark.parametrize(
    "search_space, params, warning",
    [
        (None, None, None),
        ({}, {}, "Both hydra.sweeper.params and hydra.sweeper.search_space are configured"),
        ({}, None, "`hydra.sweeper.search_space` is deprecated"),
        (None, {}, None),
    ],
)
def test_warnings_for_params_and_search_space(tmp_path, search_space, params, warning):
    """The released test_warnings' four cases, through a real sweep; with both, `params` alone is used."""
    config = OmegaConf.create(SPHERE_CONFIG)
    config.hydra.sweeper.search_space = (
        None if search_space is None else {"x": {"type": "float", "low": 10.0, "high": 11.0}}
    )
    config.hydra.sweeper.params = None if params is None else {"x": "choice(0.5)"}
    app = sphere_app(tmp_path, OmegaConf.to_yaml(config))
    url, store = storage_args(tmp_path, "w")
    proc = run_app(app, f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=2", *store)
    messages = ["Both hydra.sweeper.params", "`hydra.sweeper.search_space` is deprecated"]
    if warning is None:
        assert not any(m in proc.stderr for m in messages)
    else:
        assert warning in proc.stderr and "UserWarning" in proc.stderr
    xs = {t.params.get("x") for t in optuna.load_study(storage=url, study_name="w").trials}
    if params is not None:
        assert xs == {0.5}  # params wins: search_space's x in [10, 11] is not used
    elif search_space is not None:
        assert all(10.0 <= x <= 11.0 for x in xs)
    else:
        assert xs == {None}  # an empty search space: the job runs n_trials times as it is


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_failure_rate(tmp_path, max_failure_rate):
    """The released test_failure_rate: every job fails; below 1.0 the first batch stops the sweep with the job's
    own error, at 1.0 the study runs all its trials (and, with none complete, ends without a best trial)."""
    app = sphere_app(tmp_path)
    url, store = storage_args(tmp_path, "f")
    proc = run_app(
        app,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.job.chdir=True",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=123",
        f"hydra.sweeper.max_failure_rate={max_failure_rate}",
        "error=true",
        *store,
        check=False,
    )
    trials = optuna.load_study(storage=url, study_name="f").trials
    assert proc.returncode != 0
    assert all(t.state.name == "FAIL" for t in trials)
    if max_failure_rate < 1.0:
        assert "RuntimeError: cfg.error is True" in proc.stderr
        assert len(trials) == 2  # the first batch
    else:
        assert "RuntimeError: cfg.error is True" not in proc.stderr
        assert len(trials) == 6
        assert "no trial of study 'f' completed" in proc.stderr


def test_half_failed_batches_go_on_under_a_rate_of_one_half(tmp_path):
    """x < 0 fails: with n_jobs 2 and max_failure_rate 0.5 a batch with one failure goes on."""
    script = SPHERE.replace('if cfg.get("error", False):', "if cfg.x < 0:")
    app = write_app(tmp_path / "app", "sphere.py", script, "conf", {"config": SPHERE_CONFIG})
    url, store = storage_args(tmp_path, "half")
    run_app(
        app,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/sampler=grid",
        "x=choice(-1, 1)",
        "y=choice(0, 2)",
        "hydra.sweeper.max_failure_rate=0.5",
        *store,
    )
    states = sorted(t.state.name for t in optuna.load_study(storage=url, study_name="half").trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]


def test_an_empty_search_space_runs_the_job_n_trials_times_and_sweep_returns_nothing(hydra_sweep_runner):
    """The released test_launch_jobs: Hydra's own test app, no search space, 8 trials 3 at a time; the sweeper
    returns None."""
    sweep = hydra_sweep_runner(
        calling_file=None,
        calling_module="hydra.test_utils.a_module",
        config_path="configs",
        config_name="compose.yaml",
        task_function=None,
        overrides=[
            "hydra/sweeper=optuna",
            "hydra/launcher=basic",
            "hydra.sweeper.n_trials=8",
            "hydra.sweeper.n_jobs=3",
        ],
    )
    with sweep:
        assert sweep.returns is None
        out = OmegaConf.load(Path(sweep.temp_dir) / "optimization_results.yaml")
        assert out.best_params == {} and out.name == "optuna"


@pytest.mark.slow  # two studies' worth of processes: over 10 s on a loaded machine
def test_a_study_made_elsewhere_resumes_in_any_app(tmp_path):
    """A study created by plain Optuna (no outer-fold attributes) takes more trials from the sphere app."""
    url = f"sqlite:///{tmp_path}/test.db"
    study = optuna.create_study(study_name="elsewhere", storage=url, direction="minimize")
    study.optimize(lambda t: t.suggest_float("x", -5.5, 5.5, step=0.5) ** 2 + 1, n_trials=3)
    app = sphere_app(tmp_path)
    run_app(
        app,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=elsewhere",
        "y=0",
    )
    assert len(optuna.load_study(storage=url, study_name="elsewhere").trials) == 5


@pytest.mark.slow  # a sweep of its own: over 10 s on a loaded machine
def test_interval_on_an_int_key_samples_floats_and_int_casts(tmp_path):
    """`interval(1, 10)` samples floats even where the config holds an int; `int(interval(...))` samples ints."""
    config = SPHERE_CONFIG.replace(
        "      x: range(-5.5, 5.5, step=0.5)\n      y: choice(-5 ,0 ,5)\n",
        "      x: interval(1, 10)\n      y: int(interval(1, 5))\n",
    )
    app = sphere_app(tmp_path, config)
    url, store = storage_args(tmp_path, "casts")
    run_app(app, f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweeper.n_trials=4", *store)
    trials = optuna.load_study(storage=url, study_name="casts").trials
    assert all(isinstance(t.params["x"], float) and 1 <= t.params["x"] <= 10 for t in trials)
    assert all(isinstance(t.params["y"], int) and 1 <= t.params["y"] <= 5 for t in trials)
    assert all(t.value == pytest.approx(t.params["x"] ** 2 + t.params["y"] ** 2) for t in trials)


def test_the_released_class_path_imports_in_a_fresh_process(tmp_path):
    """Configs, pickles and `hydra.utils.get_class` name `hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.
    OptunaSweeper`; a new interpreter resolves it without importing this suite's plugin first."""
    path = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    pickled = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import pickle, sys; from hydra.utils import get_class; "
            f"sys.stdout.buffer.write(pickle.dumps(get_class('{path}')))",
        ],
        cwd=tmp_path,
        capture_output=True,
        env=env,
        check=True,
    ).stdout
    (tmp_path / "cls.pkl").write_bytes(pickled)
    code = textwrap.dedent(
        """\
        import pickle, sys
        assert not [m for m in sys.modules if m.startswith("hydra_plugins")]  # nothing imported it yet
        cls = pickle.load(open("cls.pkl", "rb"))
        from hydra_plugins.ttm_optuna_sweeper.optuna_sweeper import OptunaSweeper
        print(cls.__module__, cls.__name__, issubclass(cls, OptunaSweeper))
        """
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["hydra_plugins.hydra_optuna_sweeper.optuna_sweeper", "OptunaSweeper", "True"]


@pytest.mark.parametrize(
    "sampler, args, name",
    [
        ("gp", ["hydra.sweeper.sampler.n_startup_trials=2"], "GPSampler"),
        ("tpe_multivariate", ["hydra.sweeper.sampler.n_startup_trials=2", "hydra.sweeper.n_jobs=2"], "TPESampler"),
        ("qmc", [], "QMCSampler"),
    ],
)
def test_samplers_this_sweeper_adds_run_with_their_arguments(tmp_path, sampler, args, name):
    """GPSampler and Optuna 5's multivariate TPE with the constant liar (for parallel workers) are sampler
    options like the released ones; their constructor arguments are config keys."""
    config = SPHERE_CONFIG.replace("      x: range(-5.5, 5.5, step=0.5)\n", "      x: interval(-5.5, 5.5)\n")
    app = sphere_app(tmp_path, config)
    url, store = storage_args(tmp_path, sampler)
    proc = run_app(
        app,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra/sweeper/sampler={sampler}",
        "hydra.sweeper.n_trials=4",
        *args,
        *store,
    )
    assert f"sampler {name}" in proc.stdout
    trials = optuna.load_study(storage=url, study_name=sampler).trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    shown = subprocess.run(
        [sys.executable, app.name, f"hydra/sweeper/sampler={sampler}", "--cfg", "hydra", "--package", "hydra.sweeper"],
        cwd=app.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    node = OmegaConf.create(shown).sampler
    if sampler == "tpe_multivariate":
        assert node.multivariate is True and node.constant_liar is True
    if sampler == "gp":
        assert node.n_startup_trials == 10 and node.deterministic_objective is False
