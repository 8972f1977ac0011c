"""What a finished run records: its params, the test metrics with their interval, the confusion matrix,
the summary table, and the objective that sweeps and Optuna read."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ttm_experiments.config.schema import DEFAULT_SELECTION, Metric, TrainConfig, parse_metric
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import ConfigError
from ttm_experiments.metrics.classification import bootstrap_auroc_ci, collapsed_classes, confusion
from ttm_experiments.tracking.mlflow_tracker import MlflowTracker, _retry_locked, flatten
from ttm_experiments.training.loop import LoopResult


def config_params(c: TrainConfig) -> dict:
    """The typed config as flat plain data (enums as their values): MLflow params, and what resume compares."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return getattr(value, "value", value)

    return flatten(plain(asdict(c)))


def test_metrics(split: WindowSet, test: dict[str, float], probs: np.ndarray, *, seed: int) -> dict[str, float]:
    """The test metrics with the subject-wise bootstrap interval of the AUROC and its basis (the subjects)."""
    interval = bootstrap_auroc_ci(split.labels, probs, split.subjects, seed=seed)
    test = {**test, "n_subjects": float(len(np.unique(split.subjects)))}  # few subjects, a weak interval
    if interval is not None:
        test["auroc_ci_low"], test["auroc_ci_high"] = interval
    return test


def record_test(
    tracker: MlflowTracker,
    split: WindowSet,
    test: dict[str, float],
    probs: np.ndarray,
    *,
    step: int,
    seed: int,
    collapse_threshold: float,
    model_id: str | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Log test metrics (with the subject-wise bootstrap interval; with `model_id`, as that logged model's metrics
    on the test dataset) and the confusion matrix; return the metrics and the collapsed classes."""
    names = split.class_names
    if "n_subjects" not in test:
        test = test_metrics(split, test, probs, seed=seed)
    tracker.log_metrics({f"test/{k}": v for k, v in test.items()}, step=step, model_id=model_id, split="test")
    cm = confusion(split.labels, probs, len(names))
    tracker.log_dict(
        {"classes": list(names), "matrix": cm.tolist(), "rows": "true", "cols": "predicted"},
        "test/confusion_matrix.json",
    )
    tracker.log_figure(confusion_figure(cm, names), "test/confusion_matrix.png")
    tracker.log_text(predictions_csv(split, probs), PREDICTIONS_ARTIFACT)
    return test, collapsed_classes(test, names, collapse_threshold)


PREDICTIONS_ARTIFACT = "test/predictions.csv"


def predictions_csv(split: WindowSet, probs: np.ndarray) -> str:
    """One row per test window: subject, label (index) and p_<class>; what ttm-report's paired bootstrap reads."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "subject": split.subjects.astype(str),
            "label": split.labels.astype(int),
            **{f"p_{c}": probs[:, i] for i, c in enumerate(split.class_names)},
        }
    )
    return frame.to_csv(index=False, float_format="%.6g")


def record_model(
    tracker: MlflowTracker, c: TrainConfig, *, checkpoint, split: WindowSet, test: dict[str, float]
) -> str:
    """The best checkpoint as the run's MLflow model (input example: two test windows), registered as a new
    version of `tracking.register_model` when set; the run is tagged with the model's URIs. Returns its model id."""
    from ttm_experiments.tracking.pyfunc import log_classifier, model_name

    # a run killed after logging its model (while writing its finished marker) redoes its end on resume: the same
    # model is logged already (and registered); a second copy and version would be noise (seen by bench/chaos.py)
    if tracker.resumed:
        logged_uri = _retry_locked(lambda: tracker.client.get_run(tracker.run_id)).data.tags.get("model.uri")
        if logged_uri:
            return logged_uri.removeprefix("models:/")
    n = min(2, len(split))
    d = c.dataset
    params = {
        "backbone": c.backbone.name,
        "schedule": c.schedule.name,
        "unfreeze": c.unfreeze.strategy.value,
        "dataset": d.name,
        "fold": f"{d.fold} of {d.n_folds}",
        "seed": str(c.seed),
        "optim.lr": f"{c.optim.lr:g}",
        "scale_features": str(c.backbone.scale_features).lower(),
    }
    logged = log_classifier(
        tracking_uri=tracker.uri,
        run_id=tracker.run_id,
        checkpoint=checkpoint,
        example=np.ascontiguousarray(split.signals[:n]),
        name=model_name(c.backbone.name, c.schedule.name),
        params=params,
        test_metrics={k: v for k, v in test.items() if k in ("auroc", "balanced_acc") or k.startswith("acc/")},
        register_as=c.tracking.register_model,
    )
    tags = {"model.uri": logged.model_uri}
    if logged.registered:
        tags.update(
            {"registered_model": logged.registered, "registered_model.version": logged.registered.rsplit("/", 1)[1]}
        )
    tracker.set_tags(tags)
    return logged.model_id


def objective_value(result: LoopResult, metric: str) -> float:
    """`metric` (e.g. `val/auroc`) at the best epoch: what sweeps and Optuna optimise."""
    split, key, _ = parse_metric(metric)
    best = next(r for r in result.history if r.epoch == result.best_epoch)
    values = best.val if split == "val" else best.train
    if key not in values:
        raise ConfigError(f"optimized_metric={metric!r} is not logged; per-epoch metrics are {sorted(values)}")
    return float(values[key])


def confusion_figure(cm: np.ndarray, names: tuple[str, ...]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2 + 0.4 * len(names), 3 + 0.4 * len(names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    plt.close(fig)
    return fig


def summary_table(
    result: LoopResult, test: dict[str, float], names: tuple[str, ...], *, metric: Metric = DEFAULT_SELECTION
) -> str:
    """Per stage: the stage's best validation numbers (best on `metric`); then the test row."""
    cols = ["auroc", "balanced_acc"] + [f"acc/{c}" for c in names]
    header = f"{'':24s}" + "".join(f"{c:>14s}" for c in cols)
    lines = ["", "SUMMARY (validation per stage, test on the best checkpoint)", header]
    for report in result.reports:
        epochs = [r for r in result.history if r.stage == report.stage]
        values = [(r.val if metric.split == "val" else r.train).get(metric.key, metric.worst) for r in epochs]
        best = epochs[values.index(min(values) if metric.direction == "minimize" else max(values))]
        label = f"val {report.stage} (ep {best.epoch})"
        lines.append(f"{label:24s}" + "".join(f"{best.val.get(c, float('nan')):14.3f}" for c in cols))
    lines.append(
        f"{'test (best: ' + result.best_stage + ' ep ' + str(result.best_epoch) + ')':24s}"
        + "".join(f"{test.get(c, float('nan')):14.3f}" for c in cols)
    )
    trainable = ", ".join(f"{r.stage} {r.trainable_params:,}" for r in result.reports)
    lines.append(f"trainable parameters per stage: {trainable}")
    return "\n".join(lines)


def pretrain_summary(result: LoopResult, foundation) -> str:
    """A self-supervised schedule: each stage's validation losses and probe AUROC, and how to fine-tune."""
    return "\n".join(
        [f"SELF-SUPERVISED STAGES (foundation checkpoint: {foundation})"]
        + [
            f"  {r['stage']:12s} val ssl_loss {r['val']['ssl_loss']:.4f}  masked {r['val']['ssl_masked']:.4f} "
            f"(predicting zeros {r['val']['ssl_zero_baseline']:.4f})  linear-probe val AUROC "
            f"{r['probe_val_auroc']:.3f}"
            for r in result.ssl
        ]
        + [f"fine-tune from it: ttm-train backbone.pretrained_path={foundation.resolve()}"]
    )


def baseline_summary(name: str, val: dict[str, float], test: dict[str, float], class_names: tuple[str, ...]) -> str:
    cols = ["auroc", "auroc_ci_low", "auroc_ci_high", "balanced_acc"] + [f"acc/{n}" for n in class_names]
    return "\n".join(
        [f"BASELINE {name}", "".join(f"{k:>14s}" for k in ["split"] + cols)]
        + [
            f"{split:>14s}" + "".join(f"{values.get(k, float('nan')):14.3f}" for k in cols)
            for split, values in (("val", val), ("test", test))
        ]
    )
