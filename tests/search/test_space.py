"""The search space: hydra-optuna-sweeper's syntax, invalid distributions named, a bad space refused before anything
runs, values that survive the override round trip."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("optim.lrr=tag(log, interval(1e-5, 1e-3))", "'optim.lrr': optim.lrr=1e-05 does not fit the config"),
        ("optim.lr=interval(1e-2, 1e-5)", "'optim.lr': invalid distribution 'interval(1e-2, 1e-5)'"),
        ("unfreeze.last_n=choice(1, a)", "'unfreeze.last_n': unfreeze.last_n=a does not fit the config"),
        ("optim.lr=interval(0, 1e-3)", "'optim.lr': optim.lr=0.0 is invalid for the job"),
    ],
)
def test_bad_search_space_is_rejected_before_anything_runs(tmp_path, bad, needle):
    """The real sweeper, instantiated by Hydra from hparams_search=unfreeze_lr, given a bad command-line sweep."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    from ttm_experiments.cli.common import CONFIG_DIR
    from ttm_experiments.search.space import SearchSpaceError

    args = ["hparams_search=unfreeze_lr", "debug=smoke", f"paths.runs_dir={tmp_path}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=args, return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
        sweeper = Plugins.instance().instantiate_sweeper(hydra_context=context, task_function=lambda c: 0.0, config=cfg)
        with pytest.raises(SearchSpaceError) as err:
            sweeper.sweep(arguments=[*args, bad])
    assert needle in str(err.value)
    assert not (tmp_path / "optuna.db").exists()  # no study, no trial


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"optim.lr": "tag(log, interval(0, 1e-3))"}, "'optim.lr': invalid distribution"),
        ({"optim.lr": "interval(1e-2, 1e-4)"}, "'optim.lr': invalid distribution"),
        ({"optim.lr": "tag(logg, interval(1e-5, 1e-3))"}, "unknown tag"),
        ({"unfreeze.last_n": "range(4, 1)"}, "'unfreeze.last_n': invalid distribution"),
        ({"unfreeze.last_n": "range(0, 4, step=-1)"}, "'unfreeze.last_n': invalid distribution"),
        ({"optim.batch_size": "choice(16, 16)"}, "'optim.batch_size': invalid distribution"),
    ],
)
def test_invalid_distributions_are_named(params, needle):
    from ttm_experiments.search.space import SearchSpaceError, parse

    with pytest.raises(SearchSpaceError, match=needle.replace("(", r"\(")):
        parse(params, None, [])


def test_search_space_syntax_of_hydra_optuna_sweeper():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from ttm_experiments.search.space import grid, parse

    space = parse(
        {
            "optim.lr": "tag(log, interval(1e-5, 3e-3))",
            "unfreeze.last_n": "range(0, 4)",
            "optim.batch_size": "choice(16, 32)",
            "unfreeze": "pattern,depth",
            "optim.layer_decay": "0.8",
        },
        None,
        ["optim.weight_decay=0.1", "unfreeze.last_n=interval(1, 3)"],
        int_keys=lambda key: key == "unfreeze.last_n",
    )
    d = space.distributions
    assert d["optim.lr"] == FloatDistribution(1e-5, 3e-3, log=True)
    assert d["unfreeze.last_n"] == IntDistribution(1, 3)  # the command line wins; an int key samples ints
    assert d["optim.batch_size"] == CategoricalDistribution([16, 32])
    assert d["unfreeze"] == CategoricalDistribution(["pattern", "depth"])
    assert space.fixed == {"optim.layer_decay": "optim.layer_decay=0.8", "optim.weight_decay": "optim.weight_decay=0.1"}
    assert grid("r", parse({"r": "range(0, 4)"}, None, []).distributions["r"]) == [0, 1, 2, 3, 4]
    old = parse(None, {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}, [])
    assert old.distributions["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)


def test_values_survive_the_override_round_trip():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ttm_experiments.search.space import format_value, quote

    parser = OverridesParser.create()
    for text in [
        "sqlite:////tmp/a b/optuna.db",
        "it's",
        "back\\slash\\",
        "median:n_startup_trials=3,n_warmup_steps=5",
        "postgresql://u:p@h/db?x=1",
    ]:
        assert parser.parse_override(f"k={quote(text)}").value() == text
    for value in [3e-05, 0.1, 4, True, None, "depth"]:
        assert parser.parse_override(f"k={format_value(value)}").value() == value
