"""`schedule=linear_probe`: frozen pooled embeddings and a logistic regression, the protocol of the PPG
foundation-model papers, logged like any run so that reports compare it with fine-tuning.

The backbone (random, or the preset's pretrained weights, built as for training) runs once per split in evaluation
mode without autograd; the head's pooling (mean and max over patches per channel, plus the window's location and
log-scale with `backbone.scale_features`) turns its output into one vector per window. Those features are kept in
the stage cache (`paths.stage_cache_dir`), keyed by the backbone's weights (a digest of every tensor), the split's
windows, the pooling, the device and the code: runs that share a split and weights (other label fractions share
validation and test; other seeds share everything when the weights are pretrained) read them instead of running the
backbone again. A standardised logistic regression (scikit-learn, lbfgs; class weights `balanced` for
`optim.loss=weighted_ce`) is fitted for every C of `schedule.probe_c_grid`; the C whose validation
`optimized_metric` is best (ties: the smaller C, the stronger regularisation) is tested. The test split is scored
once, after the choice.

MLflow: train/ and val/ metrics of the chosen C at step 1 (the loop's names), test/ metrics with the
subject-wise interval, `probe/C` and `probe/C_index`, the grid as `probe/val_<key>` per C (step = position in the
grid) and `probe/grid.json`, tags `probe.C` and `probe.features` (computed or reused per split).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ttm_experiments.config.schema import LossKind, Metric, TrainConfig, parse_metric
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import ConfigError, StoreError
from ttm_experiments.metrics.classification import classification_metrics
from ttm_experiments.models.backbones import Backbone, amplitude_features, pool_patches
from ttm_experiments.models.pretrained import build_model, locate_weights
from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
from ttm_experiments.training import stage_cache
from ttm_experiments.training.device import pick_device
from ttm_experiments.training.inputs import windows_digest
from ttm_experiments.training.loop import EPOCH_KEYS, EpochRecord, LoopResult, check_selection_metric
from ttm_experiments.training.recipe import RunInfo, RunOutcome, load_splits, open_run, publish_summary, run_tags
from ttm_experiments.training.record import objective_value, record_test

log = logging.getLogger(__name__)

FEATURES_FORMAT = "linear-probe-features/1"
# what `ttm-train schedule=linear_probe --cfg job` says about the stage cache
PLAN = (
    "stage cache: linear probe, no stages; each split's pooled features are stored and reused by runs with the same "
    "backbone weights and windows (tag probe.features says which were)"
)
MAX_ITER = 5000  # lbfgs iterations: enough for standardised features; a fit that does not converge is logged


def is_probe(c: TrainConfig) -> bool:
    """`schedule=linear_probe` (a grid of C); refused for a baseline backbone, which has no embedding to probe."""
    if not c.schedule.probe_c_grid:
        return False
    if c.backbone.kind.value in ("sqi", "site"):
        raise ConfigError(
            f"schedule={c.schedule.name} probes a neural backbone's frozen embeddings, but backbone={c.backbone.name} "
            "is already a logistic regression on its own features and has no embedding. Fix: run the baseline "
            "without schedule=linear_probe (its runs do not depend on the schedule), or pick a neural backbone."
        )
    return True


def class_weight(c: TrainConfig) -> str | None:
    """The regression's class weights from `optim.loss`: balanced for weighted_ce, none for ce."""
    if c.optim.loss == LossKind.focal:
        raise ConfigError(
            "optim.loss=focal has no logistic-regression counterpart in schedule=linear_probe. "
            "Fix: optim.loss=weighted_ce (balanced class weights, the default) or optim.loss=ce."
        )
    return "balanced" if c.optim.loss == LossKind.weighted_ce else None


@torch.inference_mode()
def embed(backbone: Backbone, signals: np.ndarray, *, batch_size: int, device: torch.device, amplitude: bool):
    """One vector per window: the head's pooling of the frozen backbone's output, [N, C * 2D (+ 2C)]."""
    backbone.eval()
    out = []
    for start in range(0, len(signals), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(signals[start : start + batch_size])).to(device)
        hidden, loc, scale = backbone(x)
        parts = [pool_patches(hidden)] + ([amplitude_features(loc, scale)] if amplitude else [])
        out.append(torch.cat(parts, dim=-1).float().cpu().numpy())
    return np.concatenate(out)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 (32 hex) of every tensor of `module`'s state (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def features_key(weights: str, split: WindowSet, *, amplitude: bool, device: torch.device) -> str:
    return stage_cache.digest(
        {
            "format": FEATURES_FORMAT,
            "code": stage_cache.code_version(),
            "weights": weights,
            "windows": windows_digest(split),
            "amplitude": amplitude,
            "device": str(device),
        }
    )


@dataclass
class ProbeFit:
    """The grid's fits: per C its train and val metrics; the chosen C and its fitted pipeline."""

    grid: list[float]
    train: list[dict[str, float]]
    val: list[dict[str, float]]
    chosen: int
    model: object

    @property
    def c(self) -> float:
        return self.grid[self.chosen]


def probe_metrics(labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """The loop's per-epoch keys: the log loss (the regression's own loss) and the classification metrics."""
    from sklearn.metrics import log_loss

    loss = float(log_loss(labels, probs, labels=list(range(probs.shape[1]))))
    return {"loss": loss, **classification_metrics(labels, probs, class_names)}


def choose_c(
    train_x: np.ndarray,
    train: WindowSet,
    val_x: np.ndarray,
    val: WindowSet,
    *,
    grid: list[float],
    metric: Metric,
    class_weight: str | None,
) -> ProbeFit:
    """Fit one standardised logistic regression per C (ascending); choose by `metric` on validation (the first
    best: the smaller C on a tie). The test split is not an argument: it cannot take part in the choice."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    grid = sorted(float(c) for c in grid)
    fits, train_m, val_m = [], [], []
    for c in grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight=class_weight, max_iter=MAX_ITER))
        # one BLAS thread: lbfgs's small products gain nothing from more, and on a busy machine threads waiting
        # for each other made a fit about 50 times slower (1.2 s -> 72 s for C=100 on 1,360 x 386 features)
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(train_x, train.labels)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning("linear probe C=%g: lbfgs did not converge in %d iterations", c, MAX_ITER)
        fits.append(model)
        train_m.append(probe_metrics(train.labels, model.predict_proba(train_x), train.class_names))
        val_m.append(probe_metrics(val.labels, model.predict_proba(val_x), val.class_names))
    chosen, best = 0, metric.worst
    for i, m in enumerate(val_m):
        if metric.better(m.get(metric.key, float("nan")), best):
            chosen, best = i, m[metric.key]
    return ProbeFit(grid, train_m, val_m, chosen, fits[chosen])


class LinearProbeRecipe:
    """One linear-probe run: features once per split (or from the stage cache), the grid, the test."""

    def __init__(self, config: TrainConfig, info: RunInfo):
        self.config = config
        self.info = info
        self.features_from: dict[str, str] = {}  # split -> computed | reused | uncached

    def release(self) -> None:
        """A probe holds no run directory lock: it writes no resumable state (it has no epochs to resume)."""

    def setup(self) -> None:
        c = self.config
        self.t0 = time.perf_counter()
        torch.manual_seed(c.seed)  # a random backbone's weights follow the seed, as in training
        np.random.seed(c.seed)
        if c.trainer.num_threads:
            torch.set_num_threads(c.trainer.num_threads)
        self.metric = parse_metric(c.optimized_metric)
        if self.metric.split != "val":
            raise ConfigError(
                f"schedule=linear_probe chooses C on validation, but optimized_metric={c.optimized_metric} is a "
                "training metric. Fix: optimized_metric=val/<key>, e.g. val/auroc or val/loss."
            )
        self.class_weight = class_weight(c)
        self.device = pick_device(c.trainer.device, job_num=self.info.job_num)
        self.tracker = MlflowTracker.for_run(c.tracking, c.experiment_name)
        weights = locate_weights(c.backbone)  # before the data: a snapshot missing from the cache stops here
        self.splits = load_splits(c)
        check_selection_metric(self.metric, tuple(self.splits.train.class_names))
        self.model, self.init = build_model(
            c.backbone, num_channels=c.dataset.channels, num_classes=len(self.splits.train.class_names), src=weights
        )
        self.model.to(self.device)
        self.model.requires_grad_(False)  # nothing of the model trains
        self.cache = (
            stage_cache.StageCache(Path(c.paths.stage_cache_dir)) if c.trainer.stage_cache else None
        )  # checked writable here, before any work

    def features(self, name: str, split: WindowSet) -> np.ndarray:
        """The split's pooled embeddings: read from the stage cache when stored, else computed (and stored)."""
        c = self.config
        amplitude = c.backbone.scale_features

        def compute() -> np.ndarray:
            t = time.perf_counter()
            out = embed(
                self.model.backbone,
                split.signals,
                batch_size=c.optim.eval_batch_size,
                device=self.device,
                amplitude=amplitude,
            )
            log.info("[probe] %s features %s computed in %.1f s", name, out.shape, time.perf_counter() - t)
            return out

        if self.cache is None:
            self.features_from[name] = "uncached"
            return compute()
        key = features_key(self._weights, split, amplitude=amplitude, device=self.device)
        stage = f"features/{name}"
        with self.cache.claim(key, stage) as entry:
            if entry is not None:
                self.features_from[name] = "reused"
                log.info("[probe] %s features REUSED from the stage cache (%s)", name, self.cache.path(key))
                return entry.state["features"].numpy()
            out = compute()
            source = {"experiment": self.tracker.experiment_id, "parent": self.tracker.run_id, "stage": None}
            try:
                self.cache.store(stage_cache.Entry(key, stage, {"features": torch.from_numpy(out)}, [], source))
            except (OSError, StoreError) as err:  # a full disk: this run is fine, later runs recompute them
                log.warning("[probe] could not store the %s features in the stage cache (%s)", name, err)
            self.features_from[name] = "computed"
            return out

    def train(self) -> LoopResult:
        c = self.config
        tags = {**run_tags(c, self.info, empty=False, init=self.init.kind), **self.init.tags()}
        open_run(self.tracker, c, self.info, self.splits, tags)
        self._weights = weights_digest(self.model.backbone)
        self.tracker.start_stage("probe", {"kind": "linear_probe", "scope": "none"})
        train_x = self.features("train", self.splits.train)
        val_x = self.features("val", self.splits.val)
        fit = choose_c(
            train_x,
            self.splits.train,
            val_x,
            self.splits.val,
            grid=c.schedule.probe_c_grid,
            metric=self.metric,
            class_weight=self.class_weight,
        )
        self.fit = fit
        for i, (c_value, m) in enumerate(zip(fit.grid, fit.val)):
            self.tracker.log_metrics({"probe/grid_C": c_value, **{f"probe/val_{k}": m[k] for k in EPOCH_KEYS}}, step=i)
        grid = [{"C": cv, "train": t, "val": v} for cv, t, v in zip(fit.grid, fit.train, fit.val)]
        self.tracker.log_dict({"selected_by": self.metric.name, "chosen_C": fit.c, "grid": grid}, "probe/grid.json")
        train_m, val_m = fit.train[fit.chosen], fit.val[fit.chosen]
        self.tracker.log_metrics(
            {
                **{f"train/{k}": v for k, v in train_m.items()},
                **{f"val/{k}": v for k, v in val_m.items()},
                "probe/C": fit.c,
                "probe/C_index": fit.chosen,
                "probe/features_dim": train_x.shape[1],
            },
            step=1,
        )
        log.info(
            "[probe] C=%g chosen on %s = %.4f (grid %s)",
            fit.c,
            self.metric.name,
            val_m.get(self.metric.key, float("nan")),
            fit.grid,
        )
        self.tracker.end_stage()
        result = LoopResult(best_epoch=1, best_stage="probe", best_val_auroc=val_m.get("auroc", float("nan")))
        result.history.append(EpochRecord("probe", 1, train_m, val_m, []))
        result.best_value = val_m.get(self.metric.key, float("nan"))
        return result

    def finish(self, result: LoopResult) -> RunOutcome:
        c = self.config
        part = self.splits.test
        probs = self.fit.model.predict_proba(self.features("test", part))
        test, test_collapsed = record_test(
            self.tracker,
            part,
            probe_metrics(part.labels, probs, part.class_names),
            probs,
            step=1,
            seed=c.seed,
            collapse_threshold=c.trainer.collapse_threshold,
        )
        self.tracker.log_metrics(
            {
                "best/epoch": 1,
                "best/val_auroc": result.best_val_auroc,
                f"best/{self.metric.split}_{self.metric.key}": result.best_value,
            },
            step=1,
        )
        self.tracker.set_tags(
            {
                "mode_collapse": str(bool(test_collapsed)).lower(),
                "best.stage": "probe",
                "probe.C": f"{self.fit.c:g}",
                "probe.features": ",".join(f"{k}={v}" for k, v in self.features_from.items()),
            }
        )
        publish_summary(self.tracker, probe_summary(self.fit, c.backbone.name, result.history[0].val, test, part))
        self.tracker.end_run("FINISHED")
        log.info("run %s finished in %.1f s", self.tracker.run_id, time.perf_counter() - self.t0)
        return RunOutcome(objective_value(result, c.optimized_metric), test, self.tracker.run_id, 1, "probe")


def probe_summary(fit: ProbeFit, backbone: str, val: dict, test: dict, part: WindowSet) -> str:
    """The grid's validation AUROC per C, then the chosen C's validation and test numbers."""
    cols = ["auroc", "auroc_ci_low", "auroc_ci_high", "balanced_acc"] + [f"acc/{n}" for n in part.class_names]
    grid = ", ".join(f"C={cv:g}: {m.get('auroc', float('nan')):.3f}" for cv, m in zip(fit.grid, fit.val))
    return "\n".join(
        [
            f"LINEAR PROBE {backbone}: frozen pooled embeddings + logistic regression, C={fit.c:g} chosen on val",
            f"val AUROC per C: {grid}",
            "".join(f"{k:>14s}" for k in ["split"] + cols),
        ]
        + [
            f"{split:>14s}" + "".join(f"{values.get(k, float('nan')):14.3f}" for k in cols)
            for split, values in (("val", val), ("test", test))
        ]
    )
