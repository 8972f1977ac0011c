"""`--help` of every command (what it does, examples, only its own config groups) and the run folders of the
commands that train nothing: none, unless asked for with hydra.run.dir."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ttm_experiments.cli.common import CONFIG_DIR
from ttm_experiments.cli.help_text import group_options

COMMANDS = {"ttm-train": "train", "ttm-inspect": "inspect", "ttm-predict": "predict", "ttm-report": "report"}
TRAINING_GROUPS = {"backbone", "unfreeze", "schedule", "optim", "trainer", "hparams_search", "debug", "experiment"}


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _hydra_node(config_name: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, return_hydra_config=True).hydra


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """`<command> --help` of each Hydra command, run at once (each is a Python start-up)."""
    procs = {c: subprocess.Popen([_script(c), "--help"], stdout=subprocess.PIPE, text=True) for c in COMMANDS}
    out = {}
    for command, proc in procs.items():
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, command
        out[command] = stdout
    return out


def _groups(help_text: str) -> dict[str, tuple[str, str]]:
    """group -> (chosen, options) from the `== Config groups` section."""
    section = help_text.split("== Config groups (group=option) ==\n", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in section.splitlines():
        group, chosen, options = line.split(None, 2)
        rows[group] = (chosen, options.removeprefix("options: "))
    return rows


@pytest.mark.parametrize("command", COMMANDS)
def test_help_describes_the_command_with_examples(helps, command):
    text = helps[command]
    assert text.startswith(f"{command}: ")
    examples = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) >= 3 and all(
        line.strip().startswith(command) or line.startswith("      ") for line in examples
    )
    assert "powered by Hydra" not in text and "== Config (override any key: key=value) ==" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_exactly_the_groups_the_command_composes(helps, command):
    choices = OmegaConf.to_container(_hydra_node(COMMANDS[command]).runtime.choices)
    own = {g: c for g, c in choices.items() if g != "hydra" and not g.startswith("hydra/")}
    listed = _groups(helps[command])
    assert set(listed) == set(own)
    for group, (chosen, options) in listed.items():
        assert chosen == (own[group] if own[group] is not None else "(none)")
        assert options == ", ".join(group_options(Path(CONFIG_DIR), group))


def test_predict_and_report_help_list_no_training_group(helps):
    assert set(_groups(helps["ttm-predict"])) == {"dataset", "paths", "tracking"}
    assert set(_groups(helps["ttm-report"])) == {"paths", "tracking"}
    assert TRAINING_GROUPS <= set(_groups(helps["ttm-train"]))


def test_data_help_has_examples():
    done = subprocess.run([_script("ttm-data"), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "examples:\n  ttm-data fetch butppg data/butppg" in done.stdout


# -- run folders ---------------------------------------------------------------------------------------------------
def test_train_keeps_a_folder_per_run():
    node = _hydra_node("train")
    assert OmegaConf.to_container(node.run)["dir"] == "${paths.runs_dir}/outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    assert node.output_subdir == ".hydra" and "file" in node.job_logging.handlers and node.job.chdir is False


@pytest.mark.parametrize("config_name", ["inspect", "predict", "report"])
def test_the_other_commands_ask_for_no_folder(config_name):
    node = _hydra_node(config_name)
    assert node.run.dir == "." and node.output_subdir is None and node.job.chdir is False
    assert list(node.job_logging.handlers) == ["console"]  # no log file


@pytest.mark.slow  # three command starts, one of which builds a model (predict's own start: tests/cli/test_predict.py)
def test_inspect_and_report_write_no_folder_unless_asked(tmp_path):
    """Hydra makes the run folder before the command runs, so a failing report shows it as well as a working one."""
    work, runs = tmp_path / "work", tmp_path / "runs"
    work.mkdir()
    args = [f"paths.runs_dir={runs}"]
    calls = {
        "inspect": [_script("ttm-inspect"), "debug=smoke", "inspect.format=json", *args],
        "report": [_script("ttm-report"), "report.experiment=nothing-here", "report.log_to_mlflow=false", *args],
        "asked": [
            _script("ttm-inspect"),
            "debug=smoke",
            f"hydra.run.dir={tmp_path / 'kept'}",
            "hydra.output_subdir=.hydra",
            *args,
        ],
    }
    procs = {
        k: subprocess.Popen(c, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k, c in calls.items()
    }
    done = {k: (p.communicate(timeout=300), p.returncode) for k, p in procs.items()}
    assert done["inspect"][1] == 0 and done["inspect"][0][0].lstrip().startswith("{")
    assert done["report"][1] == 2 and "Traceback" not in done["report"][0][1]
    assert list(work.iterdir()) == []
    assert not (runs / "outputs").exists() and not list(tmp_path.rglob("*.log"))
    assert sorted(p.name for p in (tmp_path / "kept" / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
