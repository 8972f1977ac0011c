"""Makes the released `hydra-optuna-sweeper`'s module path importable without shipping files under its name.

Shipping a `hydra_plugins/hydra_optuna_sweeper/` folder would overwrite the released plugin's files (and its
uninstall would delete ours). Hydra imports the `_target_` path of a plugin (after finding it registered, see
`compat`), and so do pickle and `hydra.utils.get_class`; this module adds an import finder for it. It is
the last one Python asks, so it answers `hydra_plugins.hydra_optuna_sweeper[.optuna_sweeper]` with `compat`
only when no installed package provides that name. The module file `hydra_plugins/hydra_optuna_sweeper.py`
installs it in a fresh process (Python finds that file when it looks for the name). The leading underscore keeps
Hydra's scan from loading this module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from types import ModuleType

ALIAS = "hydra_plugins.hydra_optuna_sweeper"
_MODULES = (ALIAS, ALIAS + ".optuna_sweeper")

log = logging.getLogger(__name__)


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        if module.__name__ == ALIAS:
            module.__doc__ = "Alias of hydra_plugins.ttm_optuna_sweeper.compat (hydra-optuna-sweeper is not installed)."
            return
        from hydra_plugins.ttm_optuna_sweeper import compat

        # looked up at each access: Hydra's plugin scan executes `compat` again, which makes a new class
        module.__getattr__ = lambda name: getattr(compat, name)


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the two alias modules; every other name, and these when installed for real, go elsewhere."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(), is_package=fullname == ALIAS)


def released_plugin_installed() -> bool:
    """Whether an installed package (the released hydra-optuna-sweeper) owns the folder
    `hydra_plugins/hydra_optuna_sweeper/` (our own `hydra_optuna_sweeper.py` is a module, not a package)."""
    import hydra_plugins

    spec = importlib.machinery.PathFinder.find_spec(ALIAS, list(hydra_plugins.__path__))
    return spec is not None and spec.submodule_search_locations is not None


def install() -> None:
    """Append the finder once (Hydra's plugin scan runs this package's `__init__` again at every start)."""
    if any(isinstance(finder, AliasFinder) for finder in sys.meta_path):
        return
    sys.meta_path.append(AliasFinder())
    if released_plugin_installed():
        log.warning(
            "The released hydra-optuna-sweeper is installed next to ttm-experiments: both register "
            "`hydra/sweeper: optuna`, and it needs optuna<3, which this suite does not use. "
            "Fix: pip uninstall hydra-optuna-sweeper"
        )
