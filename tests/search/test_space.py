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

    args = ["hparams_search=unfreeze_lr", "debug=tiny", f"paths.runs_dir={tmp_path}"]
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


@pytest.mark.parametrize(
    "text, expected",
    [
        # the released plugin's meaning, as its docs and tests state it (Optuna 2's names in brackets)
        ("choice(1, 2)", ("cat", (1, 2))),
        ("choice(true, false)", ("cat", (True, False))),
        ("choice('hello', 'world')", ("cat", ("hello", "world"))),
        ("range(1, 3)", ("int", 1, 3, 1, False)),  # [IntUniform(1, 3)]: a sampler may draw 3
        ("interval(1, 5)", ("float", 1.0, 5.0, None, False)),  # Hydra's interval holds floats [Uniform]
        ("int(interval(1, 5))", ("int", 1, 5, 1, False)),  # int() casts [IntUniform]
        ("tag(log, interval(1, 5))", ("float", 1.0, 5.0, None, True)),  # [LogUniform]
        ("tag(log, int(interval(1, 5)))", ("int", 1, 5, 1, True)),  # [IntLogUniform]
        ("range(0.5, 5.5, step=1)", ("float", 0.5, 5.5, 1.0, False)),  # [DiscreteUniform]
        ("range(0, 5, step=0.5)", ("float", 0.0, 5.0, 0.5, False)),
    ],
)
def test_override_syntax_means_what_it_means_in_the_released_plugin(text, expected):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from ttm_experiments.search.space import parse

    d = parse({"key": text}, None, []).distributions["key"]
    if expected[0] == "cat":
        assert isinstance(d, CategoricalDistribution) and tuple(d.choices) == expected[1]
        return
    kind, low, high, step, log = expected
    assert type(d) is (IntDistribution if kind == "int" else FloatDistribution)
    assert (d.low, d.high, d.step, d.log) == (low, high, step, log)
    assert type(d.low) is (int if kind == "int" else float)


def test_shuffled_range_is_a_choice_and_a_log_range_is_refused():
    from optuna.distributions import CategoricalDistribution

    from ttm_experiments.search.space import SearchSpaceError, parse

    d = parse({"key": "shuffle(range(1, 3))"}, None, []).distributions["key"]
    assert isinstance(d, CategoricalDistribution) and set(d.choices) == {1, 2}
    # the released plugin drops the tag here and samples uniformly; this sweeper says so and how to get log spacing
    with pytest.raises(SearchSpaceError, match=r"tag\(log, int\(interval\(1, 100\)\)\)"):
        parse({"key": "tag(log, range(1, 100))"}, None, [])


def test_the_grid_stops_below_the_end_of_a_range_as_the_released_grid_does():
    from ttm_experiments.search.space import SearchSpaceError, grid, parse

    def points(text: str) -> list:
        return grid("k", parse({"k": text}, None, []).distributions["k"])

    assert points("range(-1, 2)") == [-1, 0, 1]
    assert points("range(0, 10, step=3)") == [0, 3, 6]  # Optuna trims the end to 9, then the grid stops below it
    assert points("range(-1.0, 1.0, step=1)") == [-1.0, 0.0]
    assert points("choice(foo, bar)") == ["foo", "bar"]
    with pytest.raises(SearchSpaceError, match="continuous"):
        points("interval(0, 1)")


def test_params_and_command_line_make_one_space():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from ttm_experiments.search.space import parse

    space = parse(
        {
            "optim.lr": "tag(log, interval(1e-5, 3e-3))",
            "unfreeze.last_n": "range(0, 4)",
            "unfreeze": "pattern,depth",
            "optim.layer_decay": "0.8",
        },
        None,
        ["optim.weight_decay=0.1", "unfreeze.last_n=interval(1, 3)", "~z"],
    )
    d = space.distributions
    assert d["optim.lr"] == FloatDistribution(1e-5, 3e-3, log=True)
    assert d["unfreeze.last_n"] == FloatDistribution(1.0, 3.0)  # the command line wins
    assert d["unfreeze"] == CategoricalDistribution(["pattern", "depth"])
    assert space.fixed == {
        "optim.layer_decay": "optim.layer_decay=0.8",
        "optim.weight_decay": "optim.weight_decay=0.1",
        "~z": "~z",
    }
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


def test_pruner_and_sampler_nodes_carry_their_constructor_arguments():
    """`hydra.sweeper.sampler.<arg>` and `hydra.sweeper.pruner.<arg>` reach the Optuna objects (the shipped space
    picks `hydra/sweeper/pruner: median`); a pruner node of another type refuses the median's arguments."""
    import optuna
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from ttm_experiments.cli.common import CONFIG_DIR
    from ttm_experiments.search.space import parse
    from ttm_experiments.search.sweeper import OptunaSweeperImpl
    from ttm_experiments.tracking.optuna_storage import build_pruner, pruner_spec

    args = [
        "hparams_search=unfreeze_lr",
        "hydra.sweeper.pruner.interval_steps=3",
        "hydra.sweeper.sampler.n_ei_candidates=7",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        node = compose("train", overrides=args, return_hydra_config=True).hydra.sweeper
        with pytest.raises(ConfigCompositionException, match="n_startup_trials"):
            compose("train", overrides=[args[0], "hydra/sweeper/pruner=hyperband"], return_hydra_config=True)
    pruner = build_pruner(pruner_spec(node.pruner))
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert (pruner._interval_steps, pruner._n_warmup_steps, pruner._n_startup_trials) == (3, 5, 4)
    sampler, _ = OptunaSweeperImpl(node.sampler, "maximize")._sampler(parse({"x": "interval(0, 1)"}, None, []))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert (sampler._n_ei_candidates, sampler._n_startup_trials) == (7, 8)
