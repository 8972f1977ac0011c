"""The Optuna sweeper of ttm-experiments, registered with Hydra as `hydra/sweeper: optuna`.

Configuration-compatible with the released `hydra-optuna-sweeper` 1.2 (same `hydra.sweeper` keys and
search-space syntax; a config that names its class still works), built on Optuna >= 4.9, with per-epoch
pruning (`hydra.sweeper.pruner`). The logic lives in `ttm_experiments.search`; this package only registers it.
"""

from hydra_plugins.ttm_optuna_sweeper import _alias

# configs that name the released plugin's class (`hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`)
# get this sweeper, without a file under that plugin's name (see _alias)
_alias.install()
