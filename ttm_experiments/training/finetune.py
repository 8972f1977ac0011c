"""Learning rates for fine-tuning pretrained or self-supervised weights.

The schedules' rates (`optim.lr` 1e-3 for head and backbone) are made for a random backbone; at that rate the
first epochs of a pretrained one wreck what it learned. A backbone that starts from weights (tag `init` ssl or
pretrained) therefore trains its blocks `optim.pretrained_backbone_lr_scale` (0.1) times slower than the schedule
says, decayed per block from the output end by `optim.pretrained_layer_decay` (0.8), while the head keeps its
rate: ULMFiT's discriminative rates and the layer-wise decay of BEiT and timm, where lower layers hold the most
general features. Both are overridable; `1.0` and `null` give the random-init rates.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ttm_experiments.config.schema import OptimConf
from ttm_experiments.training.stages import StagePlan

log = logging.getLogger(__name__)


def finetune_rates(stages: list[StagePlan], optim: OptimConf, *, init: str) -> tuple[list[StagePlan], OptimConf]:
    """The supervised stages' backbone rates and the layer decay for a run that starts from `init`."""
    if init == "random":
        return stages, optim
    scale, decay = optim.pretrained_backbone_lr_scale, optim.pretrained_layer_decay
    planned = [replace(s, backbone_lr=s.backbone_lr * scale) if s.supervised else s for s in stages]
    tuned = optim if decay is None else replace(optim, layer_decay=decay)
    log.info(
        "init=%s: supervised backbone rates x%g (optim.pretrained_backbone_lr_scale), layer decay %g "
        "(optim.pretrained_layer_decay); the head keeps its rate",
        init,
        scale,
        tuned.layer_decay,
    )
    return planned, tuned
