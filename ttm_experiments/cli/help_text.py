"""`--help` of the Hydra commands: each command's own config groups, read from its composed defaults.

Hydra's stock `$APP_CONFIG_GROUPS` lists every folder of `conf/`, so `ttm-predict --help` would offer the
training groups (schedule, unfreeze, optim) that it never reads. The help templates (`conf/hydra/help/*.yaml`)
call the `ttm_groups` resolver on `hydra.runtime.choices` instead: the groups this command's defaults list
composed, each with its current option and the options shipped in `conf/<group>/`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

RESOLVER = "ttm_groups"


def group_options(config_dir: Path, group: str) -> list[str]:
    """The selectable options of `group`: its YAML files, less the `_`-prefixed bases other options extend."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml") if not p.stem.startswith("_"))


def format_groups(choices: DictConfig | dict, config_dir: Path) -> str:
    """One line per non-Hydra group of `choices` (group -> chosen option or None), by name."""
    own = sorted((g, "(none)" if c is None else str(c)) for g, c in dict(choices).items() if not _is_hydra(g))
    wide_group = max((len(g) for g, _ in own), default=0)
    wide_choice = max((len(c) for _, c in own), default=0)
    return "\n".join(
        f"  {g:<{wide_group}}  {c:<{wide_choice}}  options: {', '.join(group_options(config_dir, g))}" for g, c in own
    )


def _is_hydra(group: str) -> bool:
    return group == "hydra" or group.startswith("hydra/")


def register_help_resolver(config_dir: str) -> None:
    """Make `${ttm_groups:${hydra.runtime.choices}}` available to the help templates (idempotent)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda choices: format_groups(choices, Path(config_dir)))
