"""`hydra_plugins.hydra_optuna_sweeper` when the released plugin is not installed: the class path that configs
written for it name (`hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`) resolves in any fresh
process (pickle, `hydra.utils.get_class`, Hydra's instantiate), not only after this suite's plugin was imported.

A module, not a package folder: it shares no file with the released plugin's `hydra_optuna_sweeper/` folder, and
when both are installed Python imports that folder (a package wins over a module of the same name), so the
released plugin keeps its own name. Importing this module installs the finder of `ttm_optuna_sweeper._alias`,
which answers the submodule `optuna_sweeper` with this suite's sweeper.
"""

from hydra_plugins.ttm_optuna_sweeper import _alias

# a package to the import system, so that `hydra_optuna_sweeper.optuna_sweeper` is looked up (by _alias's finder)
__path__: list = []

_alias.install()
