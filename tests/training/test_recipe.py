"""The recipe's run tags: what a run says about its data and its selected checkpoint."""

from __future__ import annotations

from ttm_experiments.config.spec import to_config


class _Recorder:
    """A tracker that keeps what it was given."""

    def __init__(self):
        self.tags, self.stage_tags, self.metrics, self.linked = {}, {}, {}, {}

    def set_tags(self, tags, stage=False):
        (self.stage_tags if stage else self.tags).update(tags)

    def log_metrics(self, metrics, step, run_ids=None, *, model_id=None, split=None):
        self.metrics.update(metrics)
        self.linked.update({k: (model_id, split) for k in metrics})


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
    recipe._record_best(result, [], step=2, model_id="m-1")
    tags = recipe.tracker.tags
    # the selected checkpoint's validation numbers are the logged model's, on the validation split
    assert recipe.tracker.linked["best/val_auroc"] == ("m-1", "val")
    assert tags["mode_collapse"] == "false" and tags["mode_collapse.val_epochs"] == "1"
    assert recipe.tracker.metrics["val/collapsed_epochs"] == 1
    recipe._record_best(result, ["good"], step=2, model_id="m-1")  # the selected checkpoint collapses on the test set
    assert recipe.tracker.tags["mode_collapse"] == "true"
    # the epoch's warning tags its stage run only, not the parent
    trainer = Trainer.__new__(Trainer)
    trainer.tracker, trainer.conf = _Recorder(), to_config(smoke()).trainer
    trainer._warn_collapse(result.history[0])
    assert trainer.tracker.stage_tags == {"mode_collapse": "true"} and trainer.tracker.tags == {}


def test_run_tags_say_subject_from_record(smoke, tmp_path):
    from ttm_experiments.training.recipe import RunInfo, run_tags

    info = RunInfo(output_dir=tmp_path, config_yaml="")
    assert "dataset.subject_from" not in run_tags(to_config(smoke()), info, empty=False, init="random")
    tags = run_tags(to_config(smoke("dataset.subject_from=record")), info, empty=False, init="random")
    assert tags["dataset.subject_from"] == "record"
