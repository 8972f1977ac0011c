"""`ttm-predict`: score recordings with a trained quality model; one CSV row per window.

    ttm-predict predict.model=<run id> predict.output=preds.csv dataset=butppg dataset.root=/data/butppg
    ttm-predict predict.model=models:/ppg-quality/1 predict.output=p.csv predict.input=rec.csv \
        predict.column=ppg predict.fs=30
    ttm-predict predict.model=runs/outputs/.../best.pt predict.output=p.csv predict.input=/data/100001/100001_PPG

Its config is `conf/predict.yaml` (`PredictConfig`). The model decides the windows: its context length, channel
count and the seconds a window spanned in training (`dataset.duration_s`, recorded in its checkpoint). A
`dataset=` config is read by the training loaders; `predict.input` is cut and resampled as they cut
(`data/recordings.py`). Labels, where the data has them, give per-class accuracy and AUROC.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from ttm_experiments.cli.common import CONFIG_DIR, user_errors_exit
from ttm_experiments.cli.help_text import register_help_resolver
from ttm_experiments.errors import CheckpointError, ConfigError, DataError
from ttm_experiments.models.amplitude import window_stats as amplitude_stats

log = logging.getLogger(__name__)
register_help_resolver(CONFIG_DIR)  # `--help` lists this command's own config groups (cli/help_text.py)

RUN_ID = re.compile(r"[0-9a-f]{32}")
DEFAULT_WINDOW_S = 10.0  # what checkpoints older than the `window_s` field were trained on (dataset.duration_s)


@dataclass
class Windows:
    signals: np.ndarray  # float32 [N, C, context]
    record_ids: np.ndarray  # [N] str
    start_s: np.ndarray  # [N] float
    labels: np.ndarray | None = None  # [N] int, in the model's class order
    segment: np.ndarray | None = None  # [N] int: the gap-free segment of a recording with gaps (predict.input)
    notes: list[str] = field(default_factory=list)  # what reading the input did (layout, clock, gaps), printed


def _from_mlflow(uri: str, tracking_uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    from ttm_experiments.tracking.pyfunc import QualityClassifier

    mlflow.set_tracking_uri(tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:  # not found, no such version, unreadable: the user's input
        raise CheckpointError(
            f"predict.model={uri} cannot be loaded from {tracking_uri}: {str(err).strip()[:300]}. "
            "Fix: a registered model and version that exist (models:/<name>/<version>), a run id, "
            "or tracking.uri=<the store that holds it>"
        ) from None
    model = loaded.unwrap_python_model() if hasattr(loaded, "unwrap_python_model") else None
    if not isinstance(model, QualityClassifier):
        raise CheckpointError(
            f"predict.model={uri} is an MLflow model of another kind "
            f"({sorted(loaded.metadata.flavors)}), not a ttm-train quality classifier. "
            "Fix: the model a ttm-train run logged (runs:/<run id>/model)"
        )
    return model.trained


def _from_run(run_id: str, tracking_uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    from ttm_experiments.models.inference import load_classifier

    try:
        run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    except (MlflowException, OSError) as err:
        raise CheckpointError(
            f"predict.model={run_id}: no such run in {tracking_uri} ({str(err).strip()[:200]}). Fix: the id of a "
            "finished ttm-train run, or tracking.uri=<the store that holds it>"
        ) from None
    unscored = _without_classifier(run.data.tags, run.data.params)
    if unscored:
        raise CheckpointError(
            f"predict.model={run_id} is {unscored}: it records metrics, not a classifier ttm-predict can load. "
            "Fix: a run of a trained schedule (head_only, progressive, full, ...) with a neural backbone"
        )
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="best.pt", tracking_uri=tracking_uri)
    except (MlflowException, OSError) as err:
        raise CheckpointError(
            f"predict.model={run_id}: no such run with a best.pt in {tracking_uri} "
            f"({str(err).strip()[:200]}). Fix: the id of a finished ttm-train run, or "
            "tracking.uri=<the store that holds it>"
        ) from None
    return load_classifier(path, source=f"predict.model={run_id}")


def _without_classifier(tags: dict[str, str], params: dict[str, str]) -> str | None:
    """What kind of run writes no best.pt (a linear probe, a baseline), from what it logged; None for the others."""
    from ttm_experiments.training.baseline import BASELINE_KINDS

    if "probe.C" in tags:
        return f"a linear-probe run of {tags.get('backbone', '?')} (a logistic regression on frozen embeddings)"
    if params.get("backbone.kind") in BASELINE_KINDS:
        return f"a {tags.get('backbone', '?')} baseline run"
    return None


def resolve_model(spec: str, tracking_uri: str):
    """`predict.model` as a `serving.TrainedModel`: a best.pt path, an MLflow run id or a models:/ (runs:/) URI."""
    from ttm_experiments.models.inference import load_classifier
    from ttm_experiments.tracking.mlflow_tracker import sqlite_path

    if Path(spec).expanduser().is_file() or spec.endswith(".pt"):
        return load_classifier(spec)
    if spec.startswith(("models:/", "runs:/")) or RUN_ID.fullmatch(spec):
        db = sqlite_path(tracking_uri)
        if db is not None and not db.exists():
            raise CheckpointError(
                f"predict.model={spec}: the store {tracking_uri} does not exist. Fix: "
                "tracking.uri=<the store ttm-train wrote> (or paths.runs_dir=<its runs dir>)"
            )
        return _from_mlflow(spec, tracking_uri) if "/" in spec else _from_run(spec, tracking_uri)
    raise CheckpointError(
        f"predict.model={spec} does not exist: not a file, an MLflow run id (32 hex digits) or a "
        "models:/<name>/<version> URI. Fix: runs/outputs/.../best.pt, a run id from the MLflow UI, "
        "or models:/<registered name>/<version>"
    )


def _window_s(trained) -> float:
    if trained.window_s is None:
        log.warning(
            "the checkpoint %s records no window duration (written before it did): assuming %g s",
            trained.source,
            DEFAULT_WINDOW_S,
        )
        return DEFAULT_WINDOW_S
    return trained.window_s


def dataset_windows(dataset: DictConfig, trained, *, cache_dir: Path) -> Windows:
    """A `dataset=` config through the training loaders, at the model's context and window duration."""
    from ttm_experiments.data.prepare import load_windows

    node = dataset.copy()
    node.window_length, node.duration_s = trained.context_length, _window_s(trained)
    conf = OmegaConf.to_object(node)
    ws = load_windows(conf, seed=0, cache_dir=cache_dir)
    if ws.num_channels != trained.num_channels:
        raise DataError(
            f"the model was trained on {trained.num_channels} channel(s); dataset={conf.name} gives "
            f"{ws.num_channels}. Fix: the channels it was trained on (dataset.ppg_channels, dataset.channels)"
        )
    meta = ws.meta
    ids = meta["record_id"] if "record_id" in meta else ws.subjects
    if "start_s" in meta:
        starts = np.asarray(meta["start_s"], dtype=np.float64)
    elif "window_index" in meta:
        starts = np.asarray(meta["window_index"], dtype=np.float64) * conf.duration_s
    else:
        starts = np.zeros(len(ws))
    labels = ws.labels if tuple(ws.class_names) == tuple(trained.class_names) else None
    if labels is None:
        log.info(
            "dataset=%s has classes %s, the model %s: no accuracy or AUROC",
            conf.name,
            list(ws.class_names),
            list(trained.class_names),
        )
    return Windows(np.asarray(ws.signals), np.asarray(ids).astype(str), starts, labels)


def input_windows(conf, trained) -> Windows:
    """`predict.input`: one recording (data/recordings.py), cut into the model's windows. Missing values and clock
    steps longer than one window split it into segments that no window spans."""
    from ttm_experiments.data.recordings import cut_windows, read_recording

    window_s = _window_s(trained)
    rec = read_recording(
        conf.input,
        column=conf.column,
        channels=conf.channels,
        fs=conf.fs,
        gap_s=window_s,
        time_column=conf.time_column,
        time_unit=conf.time_unit,
    )
    channels = rec.segments[0].signal.shape[0] if rec.segments else trained.num_channels
    if channels != trained.num_channels:
        raise DataError(
            f"the model was trained on {trained.num_channels} channel(s); predict.input={conf.input} "
            f"gives {channels}. Fix: predict.channels=[...] (WFDB) or an input with "
            f"{trained.num_channels} channel(s)"
        )
    cut = cut_windows(rec, window_s=window_s, context_length=trained.context_length, hop_s=conf.hop_s)
    segment = cut.segment if len(rec.segments) > 1 else None
    ids = np.full(len(cut.signals), rec.record_id)
    return Windows(cut.signals, ids, cut.start_s, segment=segment, notes=rec.notes + cut.notes)


def predictions_table(windows: Windows, probs: np.ndarray, class_names: tuple[str, ...]):
    """One row per window: record id, start, p_<class> for every class, the predicted class (and the label)."""
    import pandas as pd

    from ttm_experiments.models.inference import probability_columns

    table = pd.DataFrame({"record_id": windows.record_ids, "start_s": windows.start_s})
    if windows.segment is not None:
        table.insert(1, "segment", windows.segment)
    table[probability_columns(class_names)] = probs
    table["predicted"] = np.asarray(class_names, dtype=object)[probs.argmax(axis=1)]
    if windows.labels is not None:
        table["label"] = np.asarray(class_names, dtype=object)[windows.labels]
    return table


def summary_lines(table, probs: np.ndarray, windows: Windows, class_names: tuple[str, ...]) -> list[str]:
    """Counts per predicted class; with labels, per-class accuracy and AUROC."""
    from ttm_experiments.metrics.classification import classification_metrics

    counts = table["predicted"].value_counts()
    lines = [f"{len(table)} windows: " + ", ".join(f"{c} {int(counts.get(c, 0))}" for c in class_names)]
    if windows.labels is not None and len(table):
        m = classification_metrics(windows.labels, probs, class_names)
        accs = ", ".join(f"{c} {m[f'acc/{c}']:.3f}" for c in class_names if f"acc/{c}" in m)
        auroc = f"{m['auroc']:.3f}" if "auroc" in m else "undefined (a class is absent)"
        lines.append(f"per-class accuracy: {accs}; AUROC {auroc}; balanced accuracy {m['balanced_acc']:.3f}")
    return lines


def predict_conf(cfg: DictConfig):
    """`cfg.predict` as a PredictConf; an unset predict.model is a one-line error, not OmegaConf's traceback."""
    if OmegaConf.is_missing(cfg.predict, "model"):
        raise ConfigError(
            "predict.model is not set. Fix: predict.model=<a ttm-train run id | models:/<name>/<version> | "
            "runs/outputs/<date>/<time>/best.pt>"
        )
    return OmegaConf.to_object(cfg.predict)


def output_path(output: str | None, runs_dir: Path, name: str) -> Path:
    """`predict.output`, or a new `<runs_dir>/predictions/<name>-<date>-<time>.csv` (`-2`, `-3`... if taken)."""
    from datetime import datetime

    if output is not None:
        return Path(output).expanduser()
    base = runs_dir.expanduser() / "predictions" / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base.with_suffix(".csv"), 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}.csv")
    return path


def write_csv(table, path: Path) -> None:
    from ttm_experiments.utils.files import atomic_file

    try:
        with atomic_file(path) as tmp:
            table.to_csv(tmp, index=False)
    except OSError as err:
        raise ConfigError(f"predict.output={path} cannot be written: {err}. Fix: a writable path") from None


def check_amplitude(trained, windows: Windows, on_ood) -> tuple[np.ndarray | None, list[str]]:
    """Windows outside the training windows' location and scale, counted per recording; with `on_ood=error` a
    model that reads amplitude refuses them before scoring. Returns the [N] mask and the lines to print."""
    from ttm_experiments.config.schema import OnOutOfRange

    outside = trained.outside_training_amplitude(windows.signals)
    if outside is None or on_ood == OnOutOfRange.ignore:
        return outside, []
    if not trained.uses_amplitude:  # its probabilities are the same for a * x + b: units are no concern
        return outside, [
            f"amplitude: {int(outside.sum())} of {len(outside)} windows in other units than training's; this model "
            "does not read amplitude (its backbone's scaler removes it, backbone.scale_features=false), so its "
            "answer does not depend on them"
        ] if outside.any() else []
    if not outside.any():
        return outside, []
    ids, counts = np.unique(windows.record_ids[outside], return_counts=True)
    totals = dict(zip(*np.unique(windows.record_ids, return_counts=True)))
    per_record = ", ".join(f"{rid} {n}/{totals[rid]}" for rid, n in zip(ids[:10], counts[:10]))
    more = f" and {len(ids) - 10} more recordings" if len(ids) > 10 else ""
    loc, log_scale = amplitude_stats(windows.signals[outside])
    what = (
        f"{int(outside.sum())} of {len(outside)} windows lie outside the amplitude the model was trained on "
        f"({trained.amplitude.describe()}; these: location {loc.min():.4g}..{loc.max():.4g}, scale "
        f"{np.exp(log_scale.min()):.4g}..{np.exp(log_scale.max()):.4g}); per recording: {per_record}{more}"
    )
    part, setting = trained.amplitude_reader
    fix = (
        f"{part}, so other units change its answer. Fix: give the signal in the training data's units, or use a "
        f"model trained with {setting}"
    )
    if on_ood == OnOutOfRange.error:
        raise DataError(f"{what}: {fix} (or predict.on_ood=warn to score them anyway)")
    log.warning("%s: %s (predict.on_ood=error refuses them, =ignore hides this)", what, fix)
    return outside, [
        f"WARNING: {int(outside.sum())} of {len(outside)} windows outside the training amplitude "
        f"(column outside_training_amplitude): {per_record}{more}"
    ]


def run(cfg: DictConfig) -> dict:
    """`ttm-predict` on a composed `conf/predict.yaml`: writes the CSV, returns the table and the summary lines."""
    from ttm_experiments.config.schema import PredictConf
    from ttm_experiments.models.inference import score

    conf: PredictConf = predict_conf(cfg)
    has_dataset = cfg.get("dataset") is not None
    if has_dataset == (conf.input is not None):
        raise ConfigError(
            "ttm-predict scores either a dataset config or a file: give dataset=<butppg|windows|"
            "vitaldb|synthetic> (with dataset.root=...) or predict.input=<file>, not both or neither"
        )
    trained = resolve_model(conf.model, str(cfg.tracking.uri))
    windows = (
        dataset_windows(cfg.dataset, trained, cache_dir=Path(cfg.paths.cache_dir))
        if has_dataset
        else input_windows(conf, trained)
    )
    outside, amplitude_lines = check_amplitude(trained, windows, conf.on_ood)
    probs = score(trained, windows.signals, batch_size=conf.batch_size)
    table = predictions_table(windows, probs, trained.class_names)
    if outside is not None:
        table["outside_training_amplitude"] = outside
    name = Path(conf.input).stem if conf.input else str(cfg.dataset.name)
    output = output_path(conf.output, Path(cfg.paths.runs_dir), name)
    write_csv(table, output)
    return {
        "table": table,
        "probs": probs,
        "summary": summary_lines(table, probs, windows, trained.class_names) + amplitude_lines,
        "output": output,
        "model": trained,
        "notes": windows.notes,
    }


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    for line in [*result["notes"], *result["summary"]]:
        print(line)
    print(f"predictions: {result['output']}")


if __name__ == "__main__":
    main()
