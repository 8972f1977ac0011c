"""The best checkpoint as an MLflow model (pyfunc flavor), logged at the end of a training run.

`mlflow.pyfunc.load_model("models:/<model_id>")` (the run's `model.uri` tag; or `runs:/<run id>/<model name>`,
`models:/<registered name>/<version>`) `.predict(windows float32 [N, channels, context])` returns a DataFrame of
`p_<class>` probabilities, computed as the training code computes them (`models/inference.score`), and
`outside_training_amplitude` per window (`models/amplitude.py`). The model's metadata says what a window is
(sampling rate, seconds, context length, channels, classes), so that a client can cut and resample its signal.

The model carries this package's code (`code_paths`): with its `requirements.txt` installed, it loads in an
environment that has never seen ttm-experiments (tests/tracking/test_pyfunc_clean_env.py builds one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ARTIFACT = "checkpoint"  # the key of best.pt in the model's artifacts
AMPLITUDE_COLUMN = "outside_training_amplitude"
NOTE = "mlflow.note.content"  # the description MLflow's UI shows and edits, of a run or a logged model
# what loading the model imports (models/inference.py and what it imports), pinned to the training environment
REQUIREMENTS = (
    "mlflow",
    "torch",
    "granite-tsfm",
    "transformers",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "omegaconf",
)
# what a backbone kind's network needs beyond those (Chronos-Bolt is probe-only: never a logged model)
KIND_REQUIREMENTS = {"mantis": ("mantis-tsfm",)}


def model_name(backbone: str, schedule: str) -> str:
    """The logged model's name: what it classifies, from which backbone, trained how."""
    return f"ppg-quality-{backbone}-{schedule}".replace("_", "-")


class QualityClassifier(mlflow.pyfunc.PythonModel):
    """A ttm-train classifier: windows float32 [N, channels, context] -> DataFrame of p_<class>."""

    def load_context(self, context) -> None:
        from ttm_experiments.models.inference import load_classifier

        self.trained = load_classifier(context.artifacts[ARTIFACT], source="MLflow model")

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        from ttm_experiments.models.inference import probability_columns, score

        if isinstance(model_input, pd.DataFrame):  # a caller that ignored the tensor signature
            model_input = (
                np.stack(model_input.to_numpy().ravel()) if model_input.shape[1] == 1 else model_input.to_numpy()
            )
        windows = np.asarray(model_input)
        probs = score(self.trained, windows)
        out = pd.DataFrame(probs, columns=probability_columns(self.trained.class_names))
        outside = self.trained.outside_training_amplitude(windows)
        if outside is not None:
            out[AMPLITUDE_COLUMN] = outside
            if outside.any() and self.trained.uses_amplitude:
                log.warning(
                    "%d of %d windows lie outside the amplitude the model was trained on (%s): it reads each "
                    "window's location and scale, so other units change its answer; give the signal in the "
                    "training data's units",
                    int(outside.sum()),
                    len(outside),
                    self.trained.amplitude.describe(),
                )
        return out


def requirements(kind: str) -> list[str]:
    """Pinned to what trained the model (backbone `kind`); explicit, so that logging does not spend seconds
    inferring them."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in REQUIREMENTS + KIND_REQUIREMENTS.get(kind, ()):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def package_dir() -> str:
    """This package's source folder, which the model carries as code (no conf/, nothing of training's data)."""
    import ttm_experiments

    return str(Path(ttm_experiments.__file__).resolve().parent)


@contextlib.contextmanager
def _without_known_notices():
    """MLflow warns on every log that a Python-object model is cloudpickled: by design here, so that notice alone
    is dropped, for this call."""
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    drop = logging.Filter()
    drop.filter = lambda record: "serialized using CloudPickle" not in record.getMessage()
    pyfunc_log.addFilter(drop)
    try:
        yield
    finally:
        pyfunc_log.removeFilter(drop)


@dataclass
class LoggedModel:
    model_id: str
    model_uri: str  # models:/<model_id>
    registered: str | None  # models:/<name>/<version>, when registered
    seconds: float


def model_metadata(trained) -> dict:
    """What a client needs to make windows the model reads, and what the model is invariant to."""
    return {
        "task": "PPG signal-quality classification, one window at a time",
        "class_names": list(trained.class_names),
        "sampling_rate_hz": trained.fs,
        "window_s": trained.window_s,
        "context_length": trained.context_length,
        "num_channels": trained.num_channels,
        "input": (
            f"float32 [N, {trained.num_channels}, {trained.context_length}]: windows of {trained.window_s:g} s "
            f"resampled to {trained.context_length} samples ({trained.fs:g} Hz), no padding, no NaN"
            if trained.window_s
            else f"float32 [N, {trained.num_channels}, {trained.context_length}]"
        ),
        "output": (
            f"{', '.join(f'p_{c}' for c in trained.class_names)} (probabilities, summing to 1); {AMPLITUDE_COLUMN}: "
            "the window's location or scale is outside the training windows'"
        ),
        "amplitude_invariant": not trained.uses_amplitude,
        "training_amplitude": None if trained.amplitude is None else trained.amplitude.as_dict(),
    }


def describe(trained, name: str, metrics: dict[str, float]) -> str:
    """The registered version's description: what goes in, what comes out, how well it did on its test split."""
    card = model_metadata(trained)
    scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    invariance = (
        "Its probabilities are the same for a * x + b (a > 0): the units of the signal do not matter."
        if card["amplitude_invariant"]
        else "It reads each window's location and scale: give the signal in the units it was trained on "
        f"({trained.amplitude.describe() if trained.amplitude else 'not recorded'})."
    )
    return f"{name}: {card['task']}. Input {card['input']}. Output {card['output']}. {invariance}" + (
        f" Test: {scores}." if scores else ""
    )


def log_classifier(
    *,
    tracking_uri: str,
    run_id: str,
    checkpoint: Path,
    example: np.ndarray,
    name: str,
    params: dict[str, str],
    test_metrics: dict[str, float],
    register_as: str | None,
) -> LoggedModel:
    """Log `checkpoint` as the run's MLflow model `name` (signature and input example from `example` windows and
    what the model answers for them; `params` the training settings that made it), optionally as a new version of
    the registered model `register_as`, with a description and tags."""
    import mlflow
    from mlflow.models import Model, infer_signature

    from ttm_experiments.models.inference import load_classifier

    t0 = time.perf_counter()
    trained = load_classifier(checkpoint, source="the run's best checkpoint")
    classifier = QualityClassifier()
    classifier.trained = trained
    y = classifier.predict(None, example)
    metadata = model_metadata(trained)
    # Model.log resolves the store, the registry and the LoggedModel's experiment from the fluent globals
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    # Model.log is what mlflow.pyfunc.log_model calls, with the run given explicitly: the tracker keeps no
    # active-run stack (tracking/mlflow_tracker.py), so several runs in one process stay apart
    with _without_known_notices():
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=QualityClassifier(),
            artifacts={ARTIFACT: str(checkpoint)},
            code_paths=[package_dir()],
            signature=infer_signature(example, y),
            input_example=example,
            pip_requirements=requirements(trained.model.backbone.conf.kind.value),
            metadata=metadata,
            params=params,
            tags={"task": "ppg-quality", "classes": ",".join(trained.class_names)},
        )
    description = describe(trained, name, test_metrics)
    notes = {NOTE: description}  # the model page's Description
    registered = None
    if register_as:
        version = register(
            client,
            register_as,
            model_id=info.model_id,
            run_id=run_id,
            description=description,
            tags={
                "run_id": run_id,
                "sampling_rate_hz": f"{trained.fs:g}" if trained.fs else "unknown",
                "window_s": f"{trained.window_s:g}" if trained.window_s else "unknown",
                "context_length": str(trained.context_length),
                "classes": ",".join(trained.class_names),
                "amplitude_invariant": str(metadata["amplitude_invariant"]).lower(),
                **{k: str(v) for k, v in params.items() if k in VERSION_TAG_PARAMS},
            },
        )
        registered = f"models:/{register_as}/{version}"
        # what MLflow's own registration records on the logged model: its page lists the version
        notes["mlflow.modelVersions"] = json.dumps([{"name": register_as, "version": version}])
    client.set_logged_model_tags(info.model_id, notes)
    seconds = time.perf_counter() - t0
    log.info(
        "logged the MLflow model %s (%s) in %.1f s%s",
        name,
        info.model_uri,
        seconds,
        f" (registered as {registered})" if registered else "",
    )
    return LoggedModel(info.model_id, f"models:/{info.model_id}", registered, seconds)


VERSION_TAG_PARAMS = ("backbone", "schedule", "dataset", "fold", "seed")


def register(client, name: str, *, model_id: str, run_id: str, description: str, tags: dict[str, str]) -> str:
    """A new version of the registered model `name` (created when missing) for the logged model: what
    `registered_model_name=` does, with a description and tags, and without MLflow's console lines."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name, description="PPG signal-quality classifiers trained by ttm-train")
    except MlflowException as err:
        if err.error_code not in (ErrorCode.Name(RESOURCE_ALREADY_EXISTS), ErrorCode.Name(ALREADY_EXISTS)):
            raise
    version = client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, tags=tags, description=description, model_id=model_id
    )
    return str(version.version)
