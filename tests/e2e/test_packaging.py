"""A wheel carries the configs and the sweeper plugin, installs beside the released plugin, and runs anywhere.

The wheel is built offline from a copy of the sources (`--no-build-isolation --no-index`: the venv's setuptools);
installs go to a temporary `--target` without dependencies, which the venv already has (PYTHONPATH puts the
target first, before the editable install).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.configs import REPO

# what a build reads; copied so that it writes no build/ or *.egg-info into the working tree
SOURCES = ["pyproject.toml", "setup.py", "README.md", "conf", "ttm_experiments", "hydra_plugins"]
RELEASED = "hydra_plugins/hydra_optuna_sweeper"
RELEASED_FILES = ["__init__.py", "_impl.py", "config.py", "optuna_sweeper.py"]  # hydra-optuna-sweeper 1.2.0
SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )


def run(cmd: list[str], cwd: Path, target: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run with the installed copy first on the path, from a folder outside the repository."""
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=SKIP)
        else:
            shutil.copy2(path, src / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
    (built,) = out.glob("ttm_experiments-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip("install", "--no-deps", "--target", str(target), str(wheel))
    return target


def fake_released_plugin(folder: Path) -> Path:
    """A wheel that owns the files of hydra-optuna-sweeper 1.2.0 (tests do not download the real one)."""
    path = folder / "hydra_optuna_sweeper-1.2.0-py3-none-any.whl"
    text = "OWNER = 'released'\n\n\nclass OptunaSweeper:\n    pass\n"
    files = {f"{RELEASED}/{name}": f"# the released plugin's {name}\n{text}" for name in RELEASED_FILES}
    info = "hydra_optuna_sweeper-1.2.0.dist-info"
    files[f"{info}/METADATA"] = "Metadata-Version: 2.1\nName: hydra-optuna-sweeper\nVersion: 1.2.0\n"
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def test_wheel_ships_every_config_the_plugin_and_the_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO / "conf"
    configs = {f"ttm_experiments/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
    assert configs, "conf/ has no yaml files"
    missing = sorted(configs - names)
    assert not missing, f"the wheel lacks {len(missing)} config file(s): {missing[:5]} (see setup.py package_data)"
    modules = {
        p.relative_to(REPO).as_posix() for p in (REPO / "ttm_experiments").rglob("*.py") if "__pycache__" not in p.parts
    }
    assert not sorted(modules - names), "the wheel lacks modules (see setup.py packages)"
    plugin = "hydra_plugins/ttm_optuna_sweeper"
    assert {f"{plugin}/{name}.py" for name in ("__init__", "config", "optuna_sweeper", "compat", "_alias")} <= names
    assert not [n for n in names if n.startswith(RELEASED + "/")], "files under the released plugin's name"
    assert not [n for n in names if n.startswith(("conf/", "tests/"))], "top-level folders in site-packages"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("ttm-train", "ttm-inspect", "ttm-report"):
        assert f"{command} = " in scripts


def test_installs_beside_the_released_plugin_without_sharing_a_file(wheel, installed, tmp_path):
    target = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(target), str(wheel), str(fake_released_plugin(tmp_path)))

    def owned(dist: str) -> set[str]:
        (record,) = target.glob(f"{dist}-*.dist-info/RECORD")
        return {line.split(",")[0] for line in record.read_text().splitlines() if line}

    ours, theirs = owned("ttm_experiments"), owned("hydra_optuna_sweeper")
    assert {f"{RELEASED}/{name}" for name in RELEASED_FILES} <= theirs
    assert not ours & theirs, f"files owned by both: {sorted(ours & theirs)}"
    for name in RELEASED_FILES:  # nothing of ours overwrote the released plugin's files
        assert "OWNER = 'released'" in (target / RELEASED / name).read_text()
    ours_ = "hydra_plugins.ttm_optuna_sweeper.optuna_sweeper"
    # with the released plugin installed its files answer the class path, and our plugin says how to end the
    # clash (Hydra imports the `_target_` path, so such a config gets the released sweeper)
    imported = f"from hydra.utils import get_class; print(get_class('{SWEEPER}').__mro__[1].__module__)"
    both = run(
        [sys.executable, "-c", f"from hydra.core.plugins import Plugins; Plugins.instance(); {imported}"],
        cwd=tmp_path,
        target=target,
    )
    assert both.stdout.split() == ["builtins"]
    assert "pip uninstall hydra-optuna-sweeper" in both.stderr
    # without it, Hydra instantiates our sweeper for that `_target_`, as it does for a sweep
    instantiated = (
        "from hydra.core.plugins import Plugins; from omegaconf import OmegaConf; "
        f"sweeper = Plugins.instance()._instantiate(OmegaConf.create({{'_target_': '{SWEEPER}'}})); "
        "print(type(sweeper).__mro__[1].__module__)"
    )
    alone = run([sys.executable, "-c", f"{instantiated}; {imported}"], cwd=tmp_path, target=installed)
    assert alone.stdout.split() == [ours_, ours_]
    assert "hydra-optuna-sweeper" not in alone.stderr


@pytest.mark.slow
def test_installed_wheel_composes_and_trains_from_another_folder(installed, tmp_path):
    where = run(
        [sys.executable, "-c", "from ttm_experiments.cli.common import CONFIG_DIR; print(CONFIG_DIR)"],
        cwd=tmp_path,
        target=installed,
    )
    assert Path(where.stdout.strip()) == installed / "ttm_experiments" / "conf"
    train, inspect = str(installed / "bin" / "ttm-train"), str(installed / "bin" / "ttm-inspect")
    job = run([train, "--cfg", "job"], cwd=tmp_path, target=installed).stdout
    assert "backbone:" in job and "experiment_name: ttm-ppg-quality" in job
    run([str(installed / "bin" / "ttm-report"), "--cfg", "job"], cwd=tmp_path, target=installed)
    assert "blocks" in run([inspect, "debug=tiny"], cwd=tmp_path, target=installed).stdout.lower()
    # a user's own config folder composes with the shipped groups (the README's example)
    experiment = tmp_path / "my_conf" / "experiment" / "mine.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text(
        "# @package _global_\n# ttm-train --config-dir my_conf experiment=mine\n"
        "defaults:\n  - override /unfreeze: depth\nunfreeze:\n  last_n: 3\nexperiment_name: mine\n"
    )
    mine = run(
        [train, "--config-dir", "my_conf", "experiment=mine", "--cfg", "job"], cwd=tmp_path, target=installed
    ).stdout
    assert "experiment_name: mine" in mine and "last_n: 3" in mine and "keywords:" in mine
    searchpath = run(
        [train, "hydra.searchpath=[file://my_conf]", "experiment=mine", "--cfg", "job"], cwd=tmp_path, target=installed
    ).stdout
    assert "experiment_name: mine" in searchpath
    runs = tmp_path / "runs"
    run([train, "debug=tiny", f"paths.runs_dir={runs}"], cwd=tmp_path, target=installed)
    assert (runs / "mlflow.db").is_file()
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlruns").exists()
