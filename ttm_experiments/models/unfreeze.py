"""Blocks of a backbone, and which of them a training stage unfreezes.

One function, `find_blocks`, turns any `nn.Module` into an ordered, non-overlapping list of blocks
(input to output). Unfreezing, layer-wise learning-rate decay and `ttm-inspect` all read that one list,
so what `ttm-inspect` shows is exactly what training unfreezes. A stage that asks for blocks and gets none
stops before training (`unfreeze.on_empty=error`), naming the candidate modules and the fix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

from torch import nn

from ttm_experiments.config.schema import OnEmpty, OnNested, UnfreezeConf, UnfreezeStrategy
from ttm_experiments.config.spec import compile_pattern
from ttm_experiments.errors import UnfreezeError

if TYPE_CHECKING:
    from ttm_experiments.models.backbones import Classifier

log = logging.getLogger(__name__)

Scope = Literal["head", "partial", "full"]


def describe(rule: UnfreezeConf) -> str:
    """How blocks are found, in words: the regex or the predecessor's depth rule."""
    if rule.strategy == UnfreezeStrategy.pattern:
        return f"pattern '{rule.pattern}'"
    return f"depth rule (keywords {list(rule.keywords)}, max_dots {rule.max_dots})"


@dataclass(frozen=True)
class Block:
    name: str
    module: nn.Module = field(repr=False, compare=False)

    @property
    def params(self) -> int:
        return count_params(self.module)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _matches(rule: UnfreezeConf, name: str) -> bool:
    if rule.strategy == UnfreezeStrategy.pattern:
        if rule.pattern is None:
            raise UnfreezeError("unfreeze.strategy=pattern needs unfreeze.pattern (a regex); it is null")
        return re.fullmatch(rule.pattern, name) is not None
    return any(k in name for k in rule.keywords) and name.count(".") <= rule.max_dots


def compile_rule(rule: UnfreezeConf) -> None:
    """Fail early, with the key's name, when the rule's regex does not compile."""
    if rule.strategy == UnfreezeStrategy.pattern and rule.pattern is not None:
        compile_pattern(rule.pattern, UnfreezeError)


def find_blocks(root: nn.Module, rule: UnfreezeConf) -> list[Block]:
    """The blocks of `root`, ordered input to output, with nested matches resolved by `rule.on_nested`.
    Names are relative to `root`. Order is module registration order, which is the order in which
    TTM and PatchTST run their blocks (a test checks this with forward hooks)."""
    compile_rule(rule)
    matched = [Block(name, mod) for name, mod in root.named_modules() if name and _matches(rule, name)]
    nested = [(o.name, i.name) for o in matched for i in matched if i.name.startswith(o.name + ".")]
    if not nested:
        return matched
    if rule.on_nested == OnNested.error:
        outer, inner = nested[0]
        raise UnfreezeError(
            f"unfreeze {describe(rule)} selects both {outer!r} and its child {inner!r} "
            f"({len(nested)} nested pair(s)), so 'last n blocks' is ill-defined. Fix: make the pattern match "
            "one level only, or set unfreeze.on_nested=outer (keep parents) or unfreeze.on_nested=inner "
            "(keep children)."
        )
    keep_outer = rule.on_nested == OnNested.outer
    drop = {inner if keep_outer else outer for outer, inner in nested}
    return [b for b in matched if b.name not in drop]


def candidate_modules(root: nn.Module, limit: int = 12) -> list[str]:
    """Module names that look like repeated blocks (items of a ModuleList): what a rule should match."""
    return [n for n, _ in root.named_modules() if n and n.rsplit(".", 1)[-1].isdigit()][:limit]


def select_last(blocks: Sequence[Block], last_n: int) -> list[Block]:
    """The last `last_n` blocks (output end); 0 means none."""
    if last_n < 0 or last_n > len(blocks):
        raise UnfreezeError(
            f"unfreeze.last_n={last_n} is out of range: the backbone has {len(blocks)} blocks "
            f"({', '.join(b.name for b in blocks) or 'none'}). Use 0..{len(blocks)} "
            "(0 = head only), or schedule=full to train everything."
        )
    return list(blocks[len(blocks) - last_n :]) if last_n else []


@dataclass
class UnfreezeReport:
    """What one stage trains: printed, and logged to the stage's run."""

    stage: str
    scope: Scope
    rule: str
    blocks_found: list[str]
    blocks_unfrozen: list[str]
    total_params: int
    trainable_params: int
    empty: bool = False  # the stage asked for blocks and got none (only possible with on_empty=warn)

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def format(self) -> str:
        title = {"head": "HEAD ONLY", "full": "WHOLE MODEL"}.get(self.scope, f"LAST {len(self.blocks_unfrozen)} BLOCKS")
        lines = [
            f"[{self.stage}] UNFREEZING {title}",
            f"Found {len(self.blocks_found)} blocks ({self.rule}): {', '.join(self.blocks_found)}",
        ]
        lines += [f"  Unfrozen: {name}" for name in self.blocks_unfrozen]
        if self.empty:
            lines.append("  WARNING: no backbone block was unfrozen (on_empty=warn): the encoder stays frozen")
        lines.append(
            f"Parameter summary: Total {self.total_params:,}  Trainable {self.trainable_params:,}  "
            f"Frozen {self.frozen_params:,}  Trainable {self.trainable_pct:.1f} %"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "frozen_params": self.frozen_params, "trainable_pct": round(self.trainable_pct, 3)}


def plan_stage(
    backbone_root: nn.Module, rule: UnfreezeConf, *, scope: Scope, stage: str, blocks: list[Block] | None = None
) -> tuple[list[Block], bool]:
    """The blocks a stage unfreezes (the last `rule.last_n`), and whether it asked for blocks and got none.
    Raises before any training when a `partial` stage would unfreeze nothing (on_empty=error). `blocks` is
    `find_blocks(backbone_root, rule)` when the caller already has it."""
    if scope != "partial":
        return [], False
    if blocks is None:
        blocks = find_blocks(backbone_root, rule)
    if rule.last_n == 0:
        return [], False
    if not blocks:
        message = (
            f"stage {stage!r} asks for the last {rule.last_n} blocks, but unfreeze {describe(rule)} matches no "
            f"module of the backbone ({type(backbone_root).__name__}), so the encoder would stay frozen. "
            f"Candidate modules: {', '.join(candidate_modules(backbone_root))}. Fix: unfreeze=pattern "
            "(the backbone's block pattern), or unfreeze.pattern='<regex over those names>'; "
            "unfreeze.on_empty=warn trains the head only on purpose."
        )
        if rule.on_empty == OnEmpty.error:
            raise UnfreezeError(message)
        log.warning(message)
        return [], True
    return select_last(blocks, rule.last_n), False


def apply_stage(
    model: Classifier, rule: UnfreezeConf, *, scope: Scope, stage: str
) -> tuple[UnfreezeReport, list[Block]]:
    """Set `requires_grad` on `model` for one stage: the head always, plus the selected backbone part."""
    root = model.backbone.model
    try:
        blocks = find_blocks(root, rule)
    except UnfreezeError:
        if scope == "partial":
            raise
        blocks = []  # a head or full stage does not depend on the rule
    selected, empty = plan_stage(root, rule, scope=scope, stage=stage, blocks=blocks)
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    if scope == "full":
        root.requires_grad_(True)
    for block in selected:
        block.module.requires_grad_(True)
    found = [b.name for b in blocks]
    report = UnfreezeReport(
        stage=stage,
        scope=scope,
        rule=describe(rule),
        blocks_found=found,
        blocks_unfrozen=found if scope == "full" else [b.name for b in selected],
        total_params=count_params(model),
        trainable_params=count_params(model, trainable_only=True),
        empty=empty,
    )
    return report, selected


def freeze_frozen_modes(module: nn.Module) -> list[str]:
    """After `model.train()`: put every fully frozen module in evaluation mode; returns their names.

    A module counts as frozen when it has parameters and none of them trains; its whole subtree goes to
    evaluation mode, so the parameter-free modules inside a frozen block (dropout) follow the block. Dropout or
    BatchNorm inside a block that trains, or directly under a partly trained module, stay in training mode.
    BatchNorm's running statistics are buffers: without this a "frozen" block's statistics would still move."""
    frozen: list[str] = []

    def visit(name: str, mod: nn.Module) -> None:
        params = list(mod.parameters())
        if params and not any(p.requires_grad for p in params):
            mod.eval()
            frozen.append(name)
            return
        for child_name, child in mod.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", module)
    return frozen
