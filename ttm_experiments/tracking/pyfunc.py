"""The best checkpoint as an MLflow model (pyfunc flavor), logged at the end of a training run.

`mlflow.pyfunc.load_model("runs:/<run id>/model")` (or `models:/<model_id>`, `models:/<name>/<version>`)
`.predict(windows float32 [N, channels, context])` returns a DataFrame of `p_<class>` probabilities, computed as
the training code computes them (`serving.score`). Loading needs this package installed (the model's class
lives in it); the artifact is the run's `best.pt`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ARTIFACT = "checkpoint"  # the key of best.pt in the model's artifacts
MODEL_NAME = "model"  # runs:/<run id>/model


class QualityClassifier(mlflow.pyfunc.PythonModel):
    """A ttm-train classifier: windows float32 [N, channels, context] -> DataFrame of p_<class>."""

    def load_context(self, context) -> None:
        from ttm_experiments.models.inference import load_classifier

        self.trained = load_classifier(context.artifacts[ARTIFACT], source="MLflow model")

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from ttm_experiments.models.inference import probability_columns, score

        if isinstance(model_input, pd.DataFrame):  # a caller that ignored the tensor signature
            model_input = (
                np.stack(model_input.to_numpy().ravel()) if model_input.shape[1] == 1 else model_input.to_numpy()
            )
        probs = score(self.trained, np.asarray(model_input))
        return pd.DataFrame(probs, columns=probability_columns(self.trained.class_names))


def requirements() -> list[str]:
    """Pinned to what trained the model; explicit, so that logging does not spend seconds inferring them."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "torch", "granite-tsfm", "transformers", "numpy", "pandas", "scipy"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


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
    model_uri: str  # models:/<model_id>
    registered: str | None  # models:/<name>/<version>, when registered
    seconds: float


def log_classifier(
    *,
    tracking_uri: str,
    run_id: str,
    checkpoint: Path,
    example: np.ndarray,
    probs: np.ndarray,
    class_names: tuple[str, ...],
    register_as: str | None,
) -> LoggedModel:
    """Log `checkpoint` as the run's MLflow model (signature and input example from `example` windows and their
    probabilities), optionally as a new version of the registered model `register_as`."""
    import mlflow
    from mlflow.models import Model, infer_signature

    from ttm_experiments.models.inference import probability_columns

    t0 = time.perf_counter()
    # Model.log resolves the store, the registry and the LoggedModel's experiment from the fluent globals
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
    y = pd.DataFrame(probs, columns=probability_columns(class_names))
    # Model.log is what mlflow.pyfunc.log_model calls, with the run given explicitly: the tracker keeps no
    # active-run stack (tracking/mlflow_tracker.py), so several runs in one process stay apart
    with _without_known_notices():
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=QualityClassifier(),
            artifacts={ARTIFACT: str(checkpoint)},
            signature=infer_signature(example, y),
            input_example=example,
            pip_requirements=requirements(),
            registered_model_name=register_as,
            metadata={"class_names": list(class_names)},
        )
    registered = None
    if register_as and info.registered_model_version is not None:
        registered = f"models:/{register_as}/{info.registered_model_version}"
    seconds = time.perf_counter() - t0
    log.info(
        "logged the MLflow model %s in %.1f s%s",
        info.model_uri,
        seconds,
        f" (registered as {registered})" if registered else "",
    )
    return LoggedModel(model_uri=f"models:/{info.model_id}", registered=registered, seconds=seconds)
