"""Numbers a reviewer can trust: split seed, frozen means frozen, one selection metric, imbalance,
collapse of the selected checkpoint, no silent fallbacks, resume that heals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TTM, backbone_conf, unfreeze_rule
from mlflow.tracking import MlflowClient

from ttm_experiments.cli.train import train
from ttm_experiments.config.schema import FrozenMode, parse_metric
from ttm_experiments.config.spec import to_config
from ttm_experiments.data.prepare import pretrain_dataset
from ttm_experiments.errors import ConfigError, DataError

CLIENT = lambda runs: MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")  # noqa: E731


def _parents(runs: Path, experiment: str):
    client = CLIENT(runs)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, sorted(
        (r for r in found if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time
    )


# -- 1. split seed ---------------------------------------------------------------------------------------------
def test_seed_does_not_change_the_data_or_folds_but_split_seed_does(smoke, tmp_path):
    from ttm_experiments.training.recipe import load_splits

    def subjects(*overrides):
        splits = load_splits(to_config(smoke(*overrides, f"paths.cache_dir={tmp_path}/cache")))
        return [(p.subjects.tolist(), p.signals[:2].tolist()) for _, p in splits.items()]

    assert subjects("seed=0") == subjects("seed=1")
    assert subjects("dataset.split_seed=0") != subjects("dataset.split_seed=1")
    assert (
        pretrain_dataset(to_config(smoke("seed=5")).dataset)[1]
        == pretrain_dataset(to_config(smoke("seed=6")).dataset)[1]
    )


@pytest.mark.slow
def test_two_seeds_share_splits_json_and_differ_in_metrics(smoke, runs_dir):
    for seed in (0, 1):
        train(smoke(f"seed={seed}", "experiment_name=seeds", "schedule=full"))
    client, (a, b) = _parents(runs_dir, "seeds")
    splits = [
        json.loads(Path(client.download_artifacts(r.info.run_id, "data/splits.json")).read_text()) for r in (a, b)
    ]
    assert splits[0] == splits[1]
    assert a.data.metrics["val/loss"] != b.data.metrics["val/loss"]


# -- 3. frozen means frozen ------------------------------------------------------------------------------------
def _bn_stats(path: Path, frozen_layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["backbone"]
    return {k: v for k, v in state.items() if k.startswith(frozen_layers) and "running_" in k}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_patchtst_batchnorm_statistics_of_frozen_layers_stay_fixed(smoke, runs_dir, mode):
    train(
        smoke(
            "backbone=patchtst",
            "backbone.context_length=128",
            "backbone.patch_length=16",
            "backbone.patch_stride=16",
            "backbone.d_model=16",
            "backbone.ffn_dim=32",
            "unfreeze.last_n=1",
            f"unfreeze.frozen_mode={mode}",
            "experiment_name=frozen",
        )
    )
    _, (parent,) = _parents(runs_dir, "frozen")
    out = Path(parent.data.tags["output_dir"])
    frozen = ("encoder.layers.0.", "encoder.layers.1.")  # last_n=1 trains encoder.layers.2 only
    head, partial = _bn_stats(out / "stage-head.pt", frozen), _bn_stats(out / "stage-partial.pt", frozen)
    assert len(head) == 8  # 2 layers x 2 BatchNorms x (mean, var)
    same = [torch.equal(head[k], partial[k]) for k in head]
    assert all(same) if mode == "eval" else not any(same)


def _ttm_partial(dropout: float = 0.5):
    from ttm_experiments.models.backbones import build_classifier
    from ttm_experiments.models.unfreeze import apply_stage

    model = build_classifier(backbone_conf(dropout=dropout, **TINY_TTM), num_channels=1, num_classes=2)
    rule = unfreeze_rule(r"encoder\.mlp_mixer_encoder\.mixers\.\d+\.mixer_layers\.\d+", last_n=1)
    _, selected = apply_stage(model, rule, scope="partial", stage="partial")
    return model, selected


def test_ttm_frozen_blocks_are_deterministic_in_training_mode():
    from ttm_experiments.models.unfreeze import freeze_frozen_modes

    torch.manual_seed(0)
    model, (trained,) = _ttm_partial()
    model.train()
    frozen_names = freeze_frozen_modes(model)
    mixers = dict(model.backbone.model.named_modules())
    frozen = mixers["encoder.mlp_mixer_encoder.mixers.0.mixer_layers.0"]
    assert not frozen.training and "backbone.model.encoder.mlp_mixer_encoder.mixers.0" in frozen_names
    dropouts = [m for m in trained.module.modules() if "Dropout" in type(m).__name__]
    assert dropouts and all(m.training for m in dropouts)  # dropout inside the trained block still acts
    outputs = []
    frozen.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    x = torch.randn(4, 128, 1)
    model(x.transpose(1, 2))
    model(x.transpose(1, 2))
    assert torch.equal(outputs[0], outputs[1])
    model.train()  # frozen_mode=train: the old behaviour, dropout acts in the frozen block
    outputs.clear()
    model(x.transpose(1, 2))
    model(x.transpose(1, 2))
    assert not torch.equal(outputs[0], outputs[1])


def test_frozen_mode_is_a_config_key(smoke):
    assert to_config(smoke()).unfreeze.frozen_mode == FrozenMode.eval
    assert to_config(smoke("unfreeze.frozen_mode=train")).unfreeze.frozen_mode == FrozenMode.train


# -- 4. one selection metric -----------------------------------------------------------------------------------
def test_parse_metric_gives_the_direction():
    assert parse_metric("val/auroc").direction == "maximize"
    assert parse_metric("val/loss").direction == "minimize" and parse_metric("train/loss").split == "train"
    with pytest.raises(ConfigError, match="optimized_metric='auroc'"):
        parse_metric("auroc")


def test_a_trial_whose_direction_contradicts_the_metric_is_refused(smoke):
    with pytest.raises(ConfigError, match="optimized_metric=val/loss is to minimize.*hydra.sweeper.direction"):
        to_config(
            smoke(
                "optimized_metric=val/loss",
                "search.trial_number=0",
                "search.study_name=s",
                "search.storage=sqlite:///x.db",
                "search.direction=maximize",
            )
        )


def _records(values: list[float], key: str):
    from ttm_experiments.training.loop import EpochRecord

    return [EpochRecord("s", i + 1, {}, {key: v, "auroc": 0.5 + i / 100}, []) for i, v in enumerate(values)]


@pytest.mark.parametrize(
    "metric, values, best",
    [
        ("val/balanced_acc", [0.6, 0.8, 0.7, 0.8], 2),
        ("val/loss", [0.9, 0.5, 0.4, 0.6], 3),
    ],
)
def test_best_epoch_follows_optimized_metric_and_its_direction(metric, values, best):
    from ttm_experiments.training.loop import LoopResult, Trainer

    trainer = Trainer.__new__(Trainer)  # only the selection: no data, no model
    trainer.selection = parse_metric(metric)
    trainer.model = torch.nn.Linear(1, 1)
    result = LoopResult()
    for record in _records(values, metric.split("/")[1]):
        trainer._select(record, result)
    assert result.best_epoch == best and result.best_value == values[best - 1]
    assert result.best_val_auroc == pytest.approx(0.5 + (best - 1) / 100)


@pytest.mark.slow
def test_run_selects_the_argmin_of_val_loss(smoke, runs_dir):
    objective = train(smoke("optimized_metric=val/loss", "experiment_name=loss"))
    client, (parent,) = _parents(runs_dir, "loss")
    history = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "val/loss")}
    assert parent.data.metrics["best/epoch"] == min(history, key=history.get)
    assert objective == pytest.approx(min(history.values())) == pytest.approx(parent.data.metrics["best/val_loss"])


# -- 5. imbalance ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["weighted_ce", "focal"])
def test_sampler_with_a_weighted_loss_is_refused(smoke, loss):
    with pytest.raises(ConfigError, match=f"optim.balanced_sampler=true with optim.loss={loss}.*optim.loss=ce"):
        to_config(smoke("optim.balanced_sampler=true", f"optim.loss={loss}"))
    to_config(smoke("optim.balanced_sampler=true", "optim.loss=ce"))


def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy():
    from ttm_experiments.training.loop import FocalLoss

    logits, target = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0] * 12 + [1] * 4)
    weight = torch.tensor([0.6, 2.0])
    expected = torch.nn.CrossEntropyLoss(weight=weight)(logits, target)
    assert torch.allclose(FocalLoss(weight, gamma=0.0)(logits, target), expected)


# -- 6. collapse describes the selected checkpoint -------------------------------------------------------------
class _Recorder:
    """A tracker that keeps what it was given."""

    def __init__(self):
        self.tags, self.stage_tags, self.metrics = {}, {}, {}

    def set_tags(self, tags, stage=False):
        (self.stage_tags if stage else self.tags).update(tags)

    def log_metrics(self, metrics, step, run_ids=None):
        self.metrics.update(metrics)


def test_a_collapsed_early_epoch_does_not_tag_a_run_whose_best_checkpoint_is_fine(smoke, tmp_path):
    from ttm_experiments.training.loop import EpochRecord, LoopResult, Trainer
    from ttm_experiments.training.recipe import RunInfo, TrainRecipe

    result = LoopResult(best_epoch=2, best_stage="partial", best_value=0.8, best_val_auroc=0.8, collapse_epochs=[1])
    result.history = [
        EpochRecord("head", 1, {}, {"auroc": 0.6}, ["good"]),
        EpochRecord("partial", 2, {}, {"auroc": 0.8}, []),
    ]
    recipe = TrainRecipe(to_config(smoke()), RunInfo(output_dir=tmp_path, config_yaml=""))
    recipe.tracker = _Recorder()
    recipe._record_best(result, [], step=2)
    tags = recipe.tracker.tags
    assert tags["mode_collapse"] == "false" and tags["mode_collapse.val_epochs"] == "1"
    assert recipe.tracker.metrics["val/collapsed_epochs"] == 1
    recipe._record_best(result, ["good"], step=2)  # the selected checkpoint collapses on the test set
    assert recipe.tracker.tags["mode_collapse"] == "true"
    # the epoch's warning tags its stage run only, not the parent
    trainer = Trainer.__new__(Trainer)
    trainer.tracker, trainer.conf = _Recorder(), to_config(smoke()).trainer
    trainer._warn_collapse(result.history[0])
    assert trainer.tracker.stage_tags == {"mode_collapse": "true"} and trainer.tracker.tags == {}


# -- 7. no silent fallbacks ------------------------------------------------------------------------------------
def test_sqi_failures_are_counted_and_refused_past_the_threshold():
    from ttm_experiments.data.base import WindowSet
    from ttm_experiments.models import baselines

    fs, t = 102.4, np.arange(1024) / 102.4
    pulse = np.sin(2 * np.pi * 1.2 * t) + 0.3 * np.sin(2 * np.pi * 2.4 * t) + 100
    flat_noise = np.random.default_rng(0).normal(0, 1e-3, (1, 1024)) + np.linspace(0, 1, 1024)  # no beats

    def windows(n_bad: int) -> WindowSet:
        rows = [pulse[None]] * (40 - n_bad) + [flat_noise] * n_bad
        return WindowSet(
            signals=np.stack(rows).astype(np.float32),
            labels=np.zeros(40, np.int64),
            subjects=np.arange(40),
            class_names=("poor", "good"),
            fs=fs,
        )

    feats, failed = baselines.features("sqi", windows(0))
    assert failed == 0 and np.isfinite(feats).all()
    original = baselines._template_quality
    baselines._template_quality = lambda x, fs: float("nan") if x.std() < 0.5 else original(x, fs)
    try:
        feats, failed = baselines.features("sqi", windows(2))  # 5 %: counted, filled with the worst quality
        assert failed == 2 and feats[-1, baselines.SQI_NAMES.index("templatematch")] == 0.0
        with pytest.raises(DataError, match=r"failed .* on 3 of 40 windows, more than 5%"):
            baselines.features("sqi", windows(3))
    finally:
        baselines._template_quality = original


def test_windows_without_a_subject_key_are_refused_unless_subject_from_record(tmp_path):
    from data_fixtures import write_windows

    from ttm_experiments.config.schema import DatasetConf, SubjectFrom
    from ttm_experiments.data.windows import load_windows_dir

    write_windows(tmp_path / "w", {"": [f"rec{k}" for k in range(6)]})
    conf = DatasetConf(name="windows", root=str(tmp_path / "w"), window_length=128, duration_s=10.0)
    with pytest.raises(DataError, match="6 of 6 window files have no subject.*dataset.subject_from=record"):
        load_windows_dir(conf, cache_dir=tmp_path / "cache")
    conf.subject_from = SubjectFrom.record
    ws = load_windows_dir(conf, cache_dir=tmp_path / "cache").windows
    assert len(np.unique(ws.subjects)) == 6


def test_run_tags_say_subject_from_record(smoke, tmp_path):
    from ttm_experiments.training.recipe import RunInfo, run_tags

    info = RunInfo(output_dir=tmp_path, config_yaml="")
    assert "dataset.subject_from" not in run_tags(to_config(smoke()), info, empty=False, init="random")
    tags = run_tags(to_config(smoke("dataset.subject_from=record")), info, empty=False, init="random")
    assert tags["dataset.subject_from"] == "record"


def test_a_predefined_split_sharing_subjects_is_refused_unless_allowed():
    from ttm_experiments.data.base import WindowSet
    from ttm_experiments.data.prepare import split_subject_wise

    ws = WindowSet(
        signals=np.zeros((6, 1, 8), np.float32),
        labels=np.array([0, 1] * 3),
        subjects=np.array([1, 1, 1, 2, 3, 3]),
        class_names=("poor", "good"),
        fs=1.0,
        meta={"split": np.array([0, 0, 1, 1, 2, 2])},
    )  # subject 1 in train and val
    with pytest.raises(DataError, match="1 subject.*dataset.allow_shared_subjects=true"):
        split_subject_wise(ws, 5, 0, 0)
    assert split_subject_wise(ws, 5, 0, 0, allow_shared=True).shared_subjects == 1


def test_every_generator_round_trips(tmp_path):
    from ttm_experiments.training.resume import restore_rng, rng_state

    gen = torch.Generator().manual_seed(3)
    state = rng_state({"trainer": gen})
    drawn = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    restore_rng(state, {"trainer": gen})
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert "cuda" in state and "python" in state


def test_resume_logs_the_pending_epoch_to_each_run_that_lacks_it(tmp_path):
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
    from ttm_experiments.training.resume import continue_tracking

    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "heal")
    tracker.start_run("p", {})
    tracker.start_stage("head", {})
    parent, stage = tracker.run_id, tracker.stage_run_id
    tracker.log_metrics({"val/auroc": 0.7}, step=3, run_ids=(parent,))  # killed after the parent's write
    state = {"run_ids": {"parent": parent, "stage": stage}, "pending": {"epoch": 3, "metrics": {"val/auroc": 0.7}}}
    resumed = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "heal")
    continue_tracking(resumed, state)
    client = CLIENT(tmp_path).get_metric_history
    assert [m.step for m in client(parent, "val/auroc")] == [3]
    assert [m.step for m in client(stage, "val/auroc")] == [3]


def test_ssl_schedule_covers_every_batch_the_loop_runs():
    from ttm_experiments.config.schema import OptimConf, StageConf, StageKind, TrainerConf
    from ttm_experiments.models.backbones import build_backbone
    from ttm_experiments.training.ssl import SSLRunner, train_steps
    from ttm_experiments.training.stages import StagePlan

    assert train_steps(70, 32) == 3 and train_steps(65, 32) == 2 and train_steps(10, 32) == 1
    runner = SSLRunner(
        build_backbone(backbone_conf(**TINY_TTM), num_channels=1),
        optim=OptimConf(batch_size=32),
        trainer=TrainerConf(),
        device=torch.device("cpu"),
        seed=0,
        tracker=None,
    )
    stage = StagePlan(StageConf(name="ssl", kind=StageKind.ssl_masked), epochs=2, head_lr=1e-3, backbone_lr=1e-3)
    _, optimizer, scheduler = runner._setup(stage, 70, None)
    for _ in range(2 * 3 - 1):  # the steps before the last one of the stage
        optimizer.step()
        scheduler.step()
    assert min(g["lr"] for g in optimizer.param_groups) > 0


def test_a_pruned_run_cannot_be_resumed(tmp_path):
    from ttm_experiments.training.resume import STATE_FILE, find_state, mark_finished

    mark_finished(tmp_path / STATE_FILE, config={}, run_id="r1", pruned=True)
    with pytest.raises(ConfigError, match="was pruned by its Optuna study"):
        find_state(resume=None, output_dir=tmp_path, tracking_uri="sqlite:///x.db", config={})
