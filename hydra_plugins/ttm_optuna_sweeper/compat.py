"""Our sweeper under the class path of the released `hydra-optuna-sweeper`, for configs that spell it out.

lightning-hydra-template's search spaces set `hydra.sweeper._target_:
hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`. Hydra accepts that name only if its scan of
`hydra_plugins` found a plugin class registered under it (`__module__` + `__name__`), then imports the path.
So this module (scanned, as every module here) holds a subclass that carries that module name, and `_alias`
makes the path importable without a file under that name.
"""

from hydra_plugins.ttm_optuna_sweeper.optuna_sweeper import OptunaSweeper as _TtmOptunaSweeper

RELEASED_MODULE = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper"


class OptunaSweeper(_TtmOptunaSweeper):
    """The ttm-experiments sweeper, registered under the released plugin's class path."""


OptunaSweeper.__module__ = RELEASED_MODULE
