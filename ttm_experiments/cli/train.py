"""`ttm-train`: one run of the composed config; `-m` sweeps a grid or runs an Optuna study.

ttm-train                                         # default: ttm_1024, pattern unfreezing, synthetic PPG
ttm-train debug=smoke                             # a whole run in seconds
ttm-train -m unfreeze.last_n=0,1,2,4 optim.lr=1e-4,1e-3
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from ttm_experiments.cli.common import CONFIG_DIR, CONFIG_NAME, user_errors_exit
from ttm_experiments.cli.help_text import register_help_resolver
from ttm_experiments.errors import TrackingError, UserError
from ttm_experiments.utils.files import writable_directory

if TYPE_CHECKING:
    from ttm_experiments.training.recipe import RunInfo

# torch, scikit-learn and the training code are imported when a run starts, not at import: `ttm-train --cfg job`
# and `--help` answer in about a second instead of five (BENCHMARKS.md, start-up)

log = logging.getLogger(__name__)
register_help_resolver(CONFIG_DIR)  # `--help` lists this command's own config groups (cli/help_text.py)


def run_info(cfg: DictConfig) -> RunInfo:
    """Output folder and sweep identity, from Hydra when it runs us (tests call with a plain config)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ttm_experiments.training.recipe import RunInfo

    yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if not HydraConfig.initialized():  # called from Python (tests, notebooks): a fresh folder per call
        base = Path(cfg.paths.runs_dir) / "outputs" / "compose"
        writable_directory(
            base,
            what=f"paths.runs_dir={cfg.paths.runs_dir}",
            error=TrackingError,
            fix="paths.runs_dir=<a writable directory>. Nothing was trained.",
        )
        return RunInfo(
            output_dir=Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base)), config_yaml=yaml
        )
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        return RunInfo(out, yaml, sweep_id=str(hc.sweep.dir), job_num=hc.job.num, overrides=tuple(hc.overrides.task))
    return RunInfo(out, yaml, overrides=tuple(hc.overrides.task))


def train(cfg: DictConfig) -> float:
    """Run one configuration and return its objective (best `val/auroc`) for sweeps and Optuna.

    A baseline backbone (`backbone=baseline_sqi`, `baseline_site`) runs the baseline recipe."""
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.baseline import BASELINE_KINDS, BaselineRecipe
    from ttm_experiments.training.linear_probe import LinearProbeRecipe, is_probe
    from ttm_experiments.training.recipe import TrainRecipe, run_recipe
    from ttm_experiments.training.signals import check as check_signal
    from ttm_experiments.training.signals import graceful_stop

    config = to_config(cfg)
    recipe = BaselineRecipe if config.backbone.kind.value in BASELINE_KINDS else TrainRecipe
    recipe = LinearProbeRecipe if is_probe(config) else recipe  # schedule=linear_probe (refused for a baseline)
    with graceful_stop():  # SIGTERM/SIGINT: finish the step, keep last.pt, mark the runs KILLED, raise Stopped
        objective = run_recipe(recipe(config, run_info(cfg))).objective
        check_signal(finished=True)  # a signal during a run without steps (baseline, probe): no next job starts
    return objective


def cache_plan(argv: list[str]) -> list[str] | None:
    """After `ttm-train --cfg job` (one run, the shipped configs): which stages the stage cache would reuse."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.cfg not in ("job", "all") or args.multirun or args.config_dir or args.config_name or args.config_path:
        return None
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.baseline import BASELINE_KINDS
    from ttm_experiments.training.recipe import RunInfo, TrainRecipe

    logging.getLogger("ttm_experiments").setLevel(logging.WARNING)  # the plan, not the loading chatter
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = to_config(compose(config_name=CONFIG_NAME, overrides=args.overrides))
    if config.backbone.kind.value in BASELINE_KINDS:
        return None
    if config.schedule.probe_c_grid:  # schedule=linear_probe: no stages; the cache keeps each split's features
        from ttm_experiments.training.linear_probe import PLAN

        return [PLAN]
    return TrainRecipe(config, RunInfo(output_dir=Path("."), config_yaml="")).cache_plan()


def main() -> None:
    """The `ttm-train` command: Hydra's app, then (after `--cfg job`) the stage cache's plan for the config."""
    _app()
    try:
        plan = cache_plan(sys.argv[1:])
    except UserError as err:  # the config printed is still what was asked for; say why the plan is missing
        plan = [f"stage cache: cannot tell, the run would stop before training: {err}"]
    if plan:
        print("\n".join(f"# {line}" for line in plan))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAME)
@user_errors_exit
def _app(cfg: DictConfig) -> float:
    from ttm_experiments.training.signals import EXIT_STATUS, RESUMABLE, Stopped

    try:
        return train(cfg)
    except Stopped as stop:  # SystemExit passes through Hydra's job runner and sweepers: a multirun stops too
        if stop.finished:
            print(
                f"\nstopped ({stop.reason}): the run had finished and is recorded; no further job starts. "
                f"Exit status {EXIT_STATUS[stop.reason]}.",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(EXIT_STATUS[stop.reason])
        print(
            f"\nstopped ({stop.reason}) after a whole step; the run's last.pt holds its state. Rerun the same "
            f"command (same hydra.run.dir) to resume. Exit status {RESUMABLE} (resumable).",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(RESUMABLE)


if __name__ == "__main__":
    main()
