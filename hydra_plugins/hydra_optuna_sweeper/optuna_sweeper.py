"""`hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`: the ttm-experiments Optuna sweeper."""

from hydra_plugins.ttm_optuna_sweeper.optuna_sweeper import OptunaSweeper as _TtmOptunaSweeper


class OptunaSweeper(_TtmOptunaSweeper):
    """The same sweeper under the class path that hydra-optuna-sweeper configs spell out."""
