"""Does the head need the window's amplitude? `backbone.scale_features` true vs false, paired, on the default data
and on test windows in other units.

    ttm-train -m backbone.scale_features=true,false seed=0,1,2 dataset.fold=0,1,2,3,4 experiment_name=scale-features
    python bench/scale_features.py --experiment scale-features [--uri sqlite:///runs/mlflow.db]

Every run of the experiment is scored again on its own fold's test windows, as they are and after a change of
units that a device export brings (the model never saw these units; training is unchanged):

- `as trained`: the windows themselves (the runs' own test AUROC);
- `gain 0.5`: another camera gain (x * 0.5);
- `ADC counts`: x * 1000 + 1e6, a wearable's raw counts;
- `z-scored`: each window standardised (a pre-processed export).

Pairs are (seed, fold) with both settings; the difference true - false per pair, its mean, the sd across the pairs
and a t interval over them (pairs share folds, so the interval is about these 5 folds' subjects and 3 seeds, not
about new subjects: ttm-report's paired bootstrap gives that for the as-trained case).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

TRANSFORMS = {
    "as trained": lambda x: x,
    "gain 0.5": lambda x: x * 0.5,
    "ADC counts": lambda x: x * 1000.0 + 1e6,
    "z-scored": lambda x: (x - x.mean(axis=2, keepdims=True)) / x.std(axis=2, keepdims=True),
}


def test_windows(overrides: list[str], runs_dir: str):
    """The test split of the run's fold, composed from its overrides as ttm-train composes it."""
    from hydra import compose, initialize_config_dir

    from ttm_experiments.cli.common import CONFIG_DIR
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.recipe import load_splits

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"paths.runs_dir={runs_dir}"])
    return load_splits(to_config(cfg)).test


def main() -> None:
    import mlflow
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from ttm_experiments.models.inference import load_classifier, score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="scale-features")
    ap.add_argument("--runs-dir", default="runs")
    args = ap.parse_args()
    uri = f"sqlite:///{Path(args.runs_dir).resolve()}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000)
    runs = [r for r in runs if "stage" not in r.data.tags and "backbone.scale_features" in r.data.params]
    aurocs: dict[tuple[str, int, int], dict[str, dict[str, float]]] = {}
    cache: dict[int, object] = {}
    for run in runs:
        p = run.data.params
        fold, seed, sf = int(p["dataset.fold"]), int(p["seed"]), p["backbone.scale_features"].lower()
        overrides = [
            o for o in run.data.tags.get("overrides", "").split() if not o.startswith(("seed=", "backbone.", "paths."))
        ]
        if fold not in cache:
            cache[fold] = test_windows(overrides, args.runs_dir)
        test = cache[fold]
        ckpt = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="best.pt", tracking_uri=uri)
        trained = load_classifier(ckpt)
        x = np.asarray(test.signals, dtype=np.float64)
        found = {}
        for name, f in TRANSFORMS.items():
            probs = score(trained, f(x).astype(np.float32))
            found[name] = {
                "auroc": roc_auc_score(test.labels, probs[:, 1]),
                "balanced_acc": balanced_accuracy_score(test.labels, probs.argmax(axis=1)),
            }
        aurocs[(sf, seed, fold)] = found
        print(
            f"scale_features={sf} seed={seed} fold={fold}: "
            + ", ".join(f"{k} AUROC {v['auroc']:.3f} bal.acc {v['balanced_acc']:.3f}" for k, v in found.items())
        )
    pairs = sorted({(s, f) for (_, s, f) in aurocs if ("true", s, f) in aurocs and ("false", s, f) in aurocs})
    print(f"\n{len(pairs)} (seed, fold) pairs; mean (sd) per setting, and the paired difference true - false")
    print("| test windows | metric | scale_features=true | scale_features=false | true - false [95% t interval] |")
    print("|---|---|---|---|---|")
    for name in TRANSFORMS:
        for metric in ("auroc", "balanced_acc"):
            t = np.array([aurocs[("true", s, f)][name][metric] for s, f in pairs])
            fa = np.array([aurocs[("false", s, f)][name][metric] for s, f in pairs])
            d = t - fa
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            print(
                f"| {name} | {metric} | {t.mean():.3f} ({t.std(ddof=1):.3f}) | {fa.mean():.3f} ({fa.std(ddof=1):.3f})"
                f" | {d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}] |"
            )


if __name__ == "__main__":
    main()
