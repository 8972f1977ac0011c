"""The session's trained smoke run (the `smoke_run` fixture, tests/conftest.py): one `debug=tiny` run, its model
registered, trained once for every test that only reads a finished run (its MLflow records, best.pt, model)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from tests.helpers.configs import compose_config

EXPERIMENT = "smoke-test"
REGISTERED = "ppg-quality-test"
# one thread: the metrics are exact whatever torch's thread count was before (tests that compare a run of their own
# with this one train with trainer.num_threads=1 too)
OVERRIDES = (
    "debug=tiny",
    "trainer.num_threads=1",
    f"tracking.register_model={REGISTERED}",
    f"experiment_name={EXPERIMENT}",
)


class SmokeRun:
    """A finished smoke run in its own store below `runs`. Read it; never write to its store."""

    def __init__(self, runs: Path):
        from ttm_experiments.cli.train import train

        self.runs = runs
        self.uri = f"sqlite:///{runs}/mlflow.db"
        self.cfg = compose_config([*OVERRIDES, f"paths.runs_dir={runs}"])
        self.objective = train(self.cfg)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    @cached_property
    def runs_found(self) -> list:
        """Every run of the experiment: the parent and one per stage."""
        client = self.client
        return client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])

    @cached_property
    def parent(self):
        (parent,) = [r for r in self.runs_found if "mlflow.parentRunId" not in r.data.tags]
        return parent

    @cached_property
    def ckpt(self) -> Path:
        return next(self.runs.glob("outputs/**/best.pt"))

    @cached_property
    def config(self):
        from ttm_experiments.config.spec import to_config

        return to_config(self.cfg)

    @cached_property
    def splits(self):
        from ttm_experiments.training.recipe import load_splits

        return load_splits(self.config)


def own_probabilities(run: SmokeRun, signals: np.ndarray) -> np.ndarray:
    """The classifier as training builds it (build_classifier + the checkpoint's weights), in evaluation mode."""
    from ttm_experiments.metrics.classification import softmax
    from ttm_experiments.models.backbones import build_classifier

    c = run.config
    model = build_classifier(c.backbone, num_channels=c.dataset.channels, num_classes=2)
    state = torch.load(run.ckpt, weights_only=True)
    model.backbone.model.load_state_dict(state["backbone"])
    model.head.load_state_dict(state["head"])
    model.eval()
    with torch.inference_mode():
        return softmax(model(torch.from_numpy(np.ascontiguousarray(signals))).numpy())
