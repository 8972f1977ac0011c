"""`ttm-inspect`: the backbone's blocks and what the unfreeze strategy selects, without training.

    ttm-inspect backbone=ttm_1024 unfreeze.last_n=2
    ttm-inspect unfreeze=depth                       # the predecessor's rule: a clear error
    ttm-inspect inspect.format=json

It reads the same block list that training unfreezes (`unfreeze.find_blocks`).
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from ttm_experiments.cli.common import CONFIG_DIR, user_errors_exit
from ttm_experiments.cli.help_text import register_help_resolver
from ttm_experiments.config.schema import InspectFormat
from ttm_experiments.config.spec import to_config

# torch and the models are imported when a model is built, not at import: `ttm-inspect --help` answers at once
register_help_resolver(CONFIG_DIR)  # `--help` lists this command's own config groups (cli/help_text.py)
NUM_CLASSES = 2  # the head's size barely matters here; quality is binary


def inspect_model(cfg: DictConfig) -> dict:
    """Blocks, selection and parameter counts for `unfreeze.last_n` (the partial stage)."""
    from ttm_experiments.models import chronos
    from ttm_experiments.models.pretrained import build_model
    from ttm_experiments.models.unfreeze import apply_stage, count_params, describe, find_blocks

    config = to_config(cfg)
    model, _ = build_model(config.backbone, num_channels=config.dataset.channels, num_classes=NUM_CLASSES)
    blocks = find_blocks(model.backbone.model, config.unfreeze)
    probe_only = chronos.is_chronos(config.backbone)  # nothing of it trains: its blocks are listed, none selected
    if probe_only:
        model.requires_grad_(False)
        selected, trainable = [], 0
        text = f"backbone={config.backbone.name} is {chronos.PROBE_ONLY}; no schedule unfreezes these blocks."
    else:
        report, selected = apply_stage(model, config.unfreeze, scope="partial", stage="partial")
        trainable, text = report.trainable_params, report.format()
    return {
        "backbone": config.backbone.name,
        "rule": describe(config.unfreeze),
        "last_n": config.unfreeze.last_n,
        "total_params": count_params(model),
        "backbone_params": count_params(model.backbone),
        "head_params": count_params(model.head),
        "blocks": [{"name": b.name, "params": b.params} for b in blocks],
        "selected": [b.name for b in selected],
        "trainable_params": trainable,
        "probe_only": probe_only,
        "report": text,
    }


def format_text(info: dict) -> str:
    lines = [
        f"backbone {info['backbone']}: {info['total_params']:,} parameters "
        f"(backbone {info['backbone_params']:,}, head {info['head_params']:,})",
        f"blocks by {info['rule']}, input -> output:",
    ]
    for i, b in enumerate(info["blocks"]):
        mark = "*" if b["name"] in info["selected"] else " "
        lines.append(f" {mark} {i:2d}  {b['name']:60s} {b['params']:>10,}")
    if not info["probe_only"]:
        lines.append(f"(* = unfrozen with unfreeze.last_n={info['last_n']})")
    lines.append(info["report"])
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="inspect")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    info = inspect_model(cfg)
    if cfg.inspect.format == InspectFormat.json:  # an Enum node: a wrong value failed at compose time
        print(json.dumps({k: v for k, v in info.items() if k != "report"}, indent=2))
    else:
        print(format_text(info))


if __name__ == "__main__":
    main()
