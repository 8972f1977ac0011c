"""Label efficiency (ttm_experiments/data/label_fraction.py): training subjects subsampled, stratified by their
majority label, nested across fractions, validation and test untouched, a subset without a class refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.config.schema import DatasetConf
from ttm_experiments.data import label_fraction
from ttm_experiments.data.base import WindowSet
from ttm_experiments.data.prepare import split_subject_wise
from ttm_experiments.errors import ConfigError, DataError

FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)


def dataset(**fields) -> DatasetConf:
    return DatasetConf(name="test", loader="synthetic", **fields)


def windows(n_subjects=40, per_subject=6, good_every=4, seed=0) -> WindowSet:
    """Subjects 0..n-1; every `good_every`-th subject is mostly good, the others mostly poor (both classes in each)."""
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_subjects), per_subject)
    mostly_good = (subjects % good_every) == 0
    labels = np.where(np.arange(len(subjects)) % per_subject == 0, ~mostly_good, mostly_good).astype(np.int64)
    return WindowSet(
        signals=rng.normal(size=(len(subjects), 1, 16)).astype(np.float32),
        labels=labels,
        subjects=subjects,
        class_names=("poor", "good"),
        fs=1.6,
    )


def kept_subjects(ws: WindowSet, **fields) -> set[int]:
    sub, info = label_fraction.subsample(ws, dataset(**fields))
    assert info.subjects == len(np.unique(sub.subjects)) and info.windows == len(sub)
    return set(np.unique(sub.subjects).tolist())


def test_smaller_fractions_are_subsets_of_larger_ones_for_every_split_seed_and_fold():
    ws = windows()
    for split_seed in (0, 1):
        for fold in (0, 3):
            kept = [kept_subjects(ws, label_fraction=f, split_seed=split_seed, fold=fold) for f in FRACTIONS]
            assert [len(k) for k in kept] == [4, 10, 20, 30, 40]
            assert all(small <= large for small, large in zip(kept, kept[1:]))
    # counts nest with fractions: one order behind both settings
    assert kept_subjects(ws, label_subjects=10) == kept_subjects(ws, label_fraction=0.25)
    # the order depends on (split_seed, fold), not on chance alone
    assert kept_subjects(ws, label_fraction=0.25, fold=1) != kept_subjects(ws, label_fraction=0.25, fold=2)


def test_each_prefix_keeps_the_classes_in_their_share_of_subjects():
    ws = windows(n_subjects=40, good_every=4)  # 10 mostly-good subjects of 40
    subjects, majority = label_fraction.majority_labels(ws)
    assert majority.sum() == 10
    for k in range(4, 41):
        kept = kept_subjects(ws, label_subjects=k)
        good = int(majority[np.isin(subjects, list(kept))].sum())
        assert abs(good - k / 4) <= 1, (k, good)


def test_validation_and_test_are_untouched_and_the_training_seed_does_not_matter():
    ws = windows(n_subjects=50)
    full = split_subject_wise(ws, 5, 0, 0)
    sub = label_fraction.apply(full, dataset(label_fraction=0.25))
    assert sub.val is full.val and sub.test is full.test
    assert set(np.unique(sub.train.subjects)) < set(np.unique(full.train.subjects))
    assert sub.label_subset.subjects_total == len(np.unique(full.train.subjects))
    # windows of a kept subject are all kept, in their order
    keep = np.isin(full.train.subjects, np.unique(sub.train.subjects))
    np.testing.assert_array_equal(sub.train.signals, full.train.signals[keep])
    # fraction 1: the split as it was
    same = label_fraction.apply(full, dataset())
    assert same.train is full.train and same.label_subset.subjects == same.label_subset.subjects_total


def test_a_subset_without_a_class_is_refused_with_the_smallest_setting_that_works():
    ws = windows(n_subjects=40, good_every=20)  # 2 mostly-good subjects of 40
    # the first subject of each class comes first: 2 subjects (5 %) keep both classes, 1 cannot
    assert _keeps_good(ws, 2) and kept_subjects(ws, label_fraction=0.05)
    with pytest.raises(DataError, match=r"keeps 1 of the 40.*without subjects.*label_subjects>=2 or .*>=0.050"):
        label_fraction.subsample(ws, dataset(label_subjects=1))


def _keeps_good(ws: WindowSet, k: int) -> bool:
    order, majority = label_fraction.subject_order(ws, split_seed=0, fold=0)
    return bool(majority[:k].any()) and bool((majority[:k] == 0).any())


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"label_fraction": 0.0}, "must be in \\(0, 1\\]"),
        ({"label_fraction": 1.5}, "must be in \\(0, 1\\]"),
        ({"label_subjects": 0}, "must be >= 1"),
        ({"label_subjects": 5, "label_fraction": 0.5}, "both choose"),
    ],
)
def test_bad_settings_are_refused_before_any_data(fields, match):
    with pytest.raises(ConfigError, match=match):
        label_fraction.check_settings(dataset(**fields))


def test_more_subjects_than_the_split_holds_is_refused():
    with pytest.raises(ConfigError, match="exceeds the 40 subjects"):
        label_fraction.subsample(windows(), dataset(label_subjects=41))


@pytest.mark.slow
def test_a_run_logs_the_setting_and_the_counts_it_trained_on(smoke, runs_dir):
    """A real smoke run on 20 synthetic subjects at fraction 0.5: the params, the kept counts as metrics, and the
    kept subjects as an artifact; the validation and test splits as in a full run."""
    train(smoke("dataset.n_subjects=20", "dataset.label_fraction=0.5", "schedule=head_only"))
    client, (run,), _ = runs_of(runs_dir, "ttm-ppg-quality-smoke")
    assert run.data.params["dataset.label_fraction"] == "0.5"
    m = run.data.metrics
    total, kept_n = int(m["label/train_subjects_total"]), int(m["label/train_subjects"])
    assert kept_n == int(0.5 * total + 0.5) and kept_n < total
    assert m["label/train_windows"] == kept_n * 12 and m["label/train_windows_total"] == total * 12
    kept = json.loads(open(client.download_artifacts(run.info.run_id, "data/label_subjects.json")).read())
    splits = json.loads(open(client.download_artifacts(run.info.run_id, "data/splits.json")).read())
    assert len(kept["train_subjects"]) == kept_n == splits["train"]["subjects"]
    assert splits["val"]["subjects"] + splits["test"]["subjects"] + total == 20  # val and test: all their subjects
