"""Search spaces in the syntax of `hydra-optuna-sweeper`: Hydra override sweeps turned into Optuna distributions.

    optim.lr: tag(log, interval(1e-5, 3e-3))    float, log-uniform
    optim.layer_decay: interval(0.5, 1.0)         float, uniform (always: Hydra's interval holds floats)
    trainer.patience: int(interval(2, 8))         integers 2..8 (int() casts the interval)
    unfreeze.last_n: range(0, 4)                  integers; sampled in 0..4, a grid takes 0..3 (below)
    optim.batch_size: choice(32, 64)              categorical (also the plain form `32,64`)
    unfreeze: choice(pattern, depth)              a config group choice
    optim.weight_decay: 0.01                      fixed: the same override for every trial

The meaning is the released hydra-optuna-sweeper's: `range(a, b, step)` becomes an integer (or, with a float,
stepped float) distribution from a to b, which a sampler draws from with b included; the grid sampler takes
the points a, a+step, ... below b (as Python's range). The deprecated `hydra.sweeper.search_space` form
(`{type: float, low: .., high: .., log: .., step: ..}`) is read too. Every error names the key and the value it
came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ttm_experiments.errors import ConfigError
from ttm_experiments.tracking.run_names import MAX_LENGTH, cap, describe_overrides

try:  # Hydra prints a CompactHydraException as its message alone, without a traceback
    from hydra.errors import CompactHydraException as _Compact
except ImportError:  # pragma: no cover
    _Compact = Exception  # type: ignore[misc,assignment]


class SweepError(ConfigError, _Compact):
    """A sweep that cannot start (or ends with every trial failed); Hydra prints just this message."""


class SearchSpaceError(SweepError):
    """A search space that cannot be sampled or does not fit the config: raised before any trial runs."""


@dataclass
class SearchSpace:
    # Optuna parameter name (the override key, e.g. `optim.lr`, `+trial`) -> distribution
    distributions: dict[str, Any] = field(default_factory=dict)
    # override key -> the override every trial gets (from `params` values without a sweep, and the command line)
    fixed: dict[str, str] = field(default_factory=dict)
    # where each entry came from, for messages: key -> 'hydra.sweeper.params' | 'command line' | ...
    origin: dict[str, str] = field(default_factory=dict)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The job overrides for one trial: fixed ones first, then the sampled values."""
        return list(self.fixed.values()) + [f"{name}={format_value(value)}" for name, value in params.items()]


def format_value(value: Any) -> str:
    """A sampled value as the right-hand side of a Hydra override."""
    from hydra.core.override_parser.types import Override

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return Override._get_value_element_as_str(value)


def quote(text: str) -> str:
    """A string as a single-quoted Hydra override value (backslashes doubled only before a quote)."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def parse(
    params: Mapping[str, Any] | None,
    search_space: Mapping[str, Any] | None,
    arguments: Iterable[str],
) -> SearchSpace:
    """`hydra.sweeper.params` (or the deprecated `search_space`) plus the command-line overrides.
    A command-line override of a key in `params` replaces it (a fixed value there fixes the key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    space = SearchSpace()
    if search_space:
        for key, spec in search_space.items():
            space.distributions[str(key)] = _from_dict(str(key), spec)
            space.origin[str(key)] = "hydra.sweeper.search_space"
    lines = [(f"{key}={_param_text(value)}", "hydra.sweeper.params") for key, value in (params or {}).items()]
    lines += [(arg, "command line") for arg in arguments]
    parser = OverridesParser.create()
    for line, origin in lines:
        key = line.split("=", 1)[0]
        try:
            override = parser.parse_override(line)
        except OverrideParseException as err:
            raise SearchSpaceError(f"{origin} '{key}': cannot parse '{line}': {_first_line(err)}") from None
        name = override.get_key_element()
        space.distributions.pop(name, None)
        space.fixed.pop(name, None)
        space.origin[name] = origin
        if override.is_sweep_override():
            space.distributions[name] = _from_override(name, override, origin)
        else:
            space.fixed[name] = line  # as written: what Hydra parsed
    return space


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return format_value(value)


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    # Hydra's parse errors start with 'Error parsing override' and explain on the second line
    return " ".join(lines[:2])[:400] if lines else type(err).__name__


def _from_override(name: str, override, origin: str):
    """A sweep override (`choice`, `range`, `interval`, optionally `tag(log, ...)`) as an Optuna distribution."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = override.value()
    text = override.input_line.split("=", 1)[1] if override.input_line else str(value)
    where = f"{origin} '{name}'"
    tags = set(getattr(value, "tags", ()) or ())
    unknown = tags - {"log"}
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown tag {sorted(unknown)} in '{text}': the only tag is 'log', "
            "e.g. tag(log, interval(1e-5, 3e-3))"
        )
    log = "log" in tags
    try:
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            return _choice(override, log)
        if isinstance(value, RangeSweep):
            return _range(value, log)
        if isinstance(value, IntervalSweep):
            return _interval(value, log)
    except ValueError as err:
        raise SearchSpaceError(f"{where}: invalid distribution '{text}': {err}") from None
    raise SearchSpaceError(
        f"{where}: '{text}' is not a search space; use choice(...), range(...), "
        "interval(...) or tag(log, interval(...))"
    )


def _choice(override, log: bool):
    from hydra.core.override_parser.types import Transformer
    from optuna.distributions import CategoricalDistribution

    if log:
        raise ValueError("tag(log, ...) applies to interval(...) and range(...), not to a choice")
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    for choice in choices:
        if not (choice is None or isinstance(choice, (str, int, float, bool))):
            raise ValueError(
                f"choice {choice!r} is a {type(choice).__name__}; choices must be numbers, strings, booleans or null"
            )
    if len(set(map(repr, choices))) != len(choices):
        raise ValueError("the choices repeat a value")
    return CategoricalDistribution(choices)


def _range(value, log: bool):
    from optuna.distributions import FloatDistribution, IntDistribution

    start, stop, step = value.start, value.stop, value.step if value.step is not None else 1
    if step <= 0:
        raise ValueError(f"step={step} must be > 0")
    if stop < start:
        raise ValueError(f"the range is empty: stop {stop} < start {start}")
    if log:  # the released plugin drops the tag here without a word: refused instead
        raise ValueError(
            f"tag(log, ...) does not apply to range(...); use tag(log, int(interval({start}, {stop}))) for "
            "log-spaced integers"
        )
    if all(isinstance(v, int) for v in (start, stop, step)):
        return IntDistribution(int(start), int(stop), step=int(step))
    return FloatDistribution(float(start), float(stop), step=float(step))


def _interval(value, log: bool):
    """Hydra's interval holds floats; `int(interval(a, b))` holds ints and samples integers."""
    from optuna.distributions import FloatDistribution, IntDistribution

    if isinstance(value.start, int) and isinstance(value.end, int):
        return IntDistribution(value.start, value.end, log=log)
    return FloatDistribution(float(value.start), float(value.end), log=log)


def _from_dict(name: str, spec: Mapping[str, Any]):
    """The deprecated `search_space` entry: {type: int|float|categorical, low, high, log, step, choices}."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    where = f"hydra.sweeper.search_space '{name}'"
    spec = dict(spec)
    kind = str(spec.pop("type", "")).split(".")[-1]
    allowed = {
        "categorical": {"choices"},
        "int": {"low", "high", "log", "step"},
        "float": {"low", "high", "log", "step"},
    }
    if kind not in allowed:
        raise SearchSpaceError(f"{where}: type must be int, float or categorical, got {kind or 'nothing'}")
    extra = set(spec) - allowed[kind]
    if extra:
        raise SearchSpaceError(f"{where}: unknown field(s) {sorted(extra)} for type {kind}")
    try:
        if kind == "categorical":
            return CategoricalDistribution(list(spec.get("choices") or []))
        if spec.get("low") is None or spec.get("high") is None:
            raise ValueError("low and high are required")
        step = spec.get("step")
        log = bool(spec.get("log", False))
        if kind == "int":
            return IntDistribution(int(spec["low"]), int(spec["high"]), log=log, step=int(step or 1))
        return FloatDistribution(
            float(spec["low"]), float(spec["high"]), log=log, step=None if step is None else float(step)
        )
    except (ValueError, TypeError) as err:
        raise SearchSpaceError(f"{where}: invalid distribution {spec}: {err}") from None


def probe_values(distribution) -> list[Any]:
    """Values that stand for a distribution when the space is checked against the config: its ends, every choice."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high] if distribution.low != distribution.high else [distribution.low]


def grid(name: str, distribution) -> list[Any]:
    """The grid of one parameter for `optuna.samplers.GridSampler`: the choices, or low, low+step, ... below high
    (the released plugin's grid: `range(-1, 2)` is -1, 0, 1); continuous intervals have none."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high, distribution.step))
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:
        n = int((distribution.high - distribution.low) // distribution.step)
        return [round(distribution.low + i * distribution.step, 12) for i in range(n)]
    raise SearchSpaceError(
        f"'{name}': the grid sampler needs discrete values, but {distribution} is continuous. "
        "Use choice(...) or range(low, high, step=...), or another sampler."
    )


def validate_train_config(cfg) -> None:
    """The job-side checks of `ttm-train` on a composed config (plain `DictConfig`, no `hydra` node)."""
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.data import inner_folds

    inner_folds.check(to_config(cfg).search)


def trial_name(number: int, params: Mapping[str, Any]) -> str:
    """An Optuna trial's run: `trial 3: last_n=2 lr=0.0004` (its sampled parameters)."""
    # sampled floats to 3 significant digits: the name is for reading; the run's params hold the exact value
    text = describe_overrides(
        f"{k}={f'{v:.3g}' if isinstance(v, float) else format_value(v)}" for k, v in params.items()
    )
    return cap(f"trial {number}: {text}" if text else f"trial {number}", MAX_LENGTH)
