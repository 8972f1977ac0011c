"""Compatibility alias, not the released `hydra-optuna-sweeper` (which pins optuna<3 and must not be installed).

Search spaces written for that plugin, like the lightning-hydra-template's, name its class explicitly
(`hydra.sweeper._target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`); Hydra imports
that path, so this package answers it with the sweeper of `hydra_plugins.ttm_optuna_sweeper`. It registers
no config: `hydra/sweeper: optuna` comes from `ttm_optuna_sweeper`.
"""
