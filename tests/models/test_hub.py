"""Public checkpoints by hub id and revision, against a Hugging Face cache laid out as huggingface_hub does it
(`hub/models--<org>--<name>/refs/<revision>` -> commit, `snapshots/<commit>/config.json + model.safetensors`),
built from `...ForPrediction(config).save_pretrained` with the public shapes; no network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from ttm_experiments.config.spec import to_config
from ttm_experiments.errors import CheckpointError
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.hub import resolve_pretrained
from ttm_experiments.models.pretrained import build_model
from ttm_experiments.models.unfreeze import apply_stage, find_blocks

R2, R1, TSP = (
    "ibm-granite/granite-timeseries-ttm-r2",
    "ibm-granite/granite-timeseries-ttm-r1",
    "ibm-granite/granite-timeseries-tspulse-r1",
)
TSP_REV = "tspulse-block-dualhead-512-p16-r1"
# repo, revision -> the public shape (context, patch, d_model, decoder_d_model); parameter counts as published
TTM_SNAPSHOTS = {
    (R2, "main"): (512, 64, 192, 128),
    (R2, "1024-96-r2"): (1024, 128, 384, 256),
    (R2, "1536-96-r2"): (1536, 128, 384, 256),
    (R1, "1024_96_v1"): (1024, 64, 192, 128),
    ("test-org/ttm-prefix", "main"): (1024, 64, 192, 128),
}
PRESETS = {
    "ttm_r2_512": (R2, "main"),
    "ttm_r2_1024": (R2, "1024-96-r2"),
    "ttm_r2_1536": (R2, "1536-96-r2"),
    "ttm_r1_1024": (R1, "1024_96_v1"),
    "tspulse_r1": (TSP, TSP_REV),
}


def _write_snapshot(hub: Path, repo: str, revision: str, model) -> str:
    """save_pretrained into snapshots/<commit>/ and point refs/<revision> at it."""
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    root = hub / f"models--{repo.replace('/', '--')}"
    model.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return commit


def _ttm(ctx: int, patch: int, d: int, dd: int, **extra):
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    return TinyTimeMixerForPrediction(
        TinyTimeMixerConfig(
            context_length=ctx,
            patch_length=patch,
            patch_stride=patch,
            d_model=d,
            decoder_d_model=dd,
            num_layers=2,
            decoder_num_layers=2,
            adaptive_patching_levels=3,
            expansion_factor=2,
            prediction_length=96,
            dropout=0.4,
            head_dropout=0.4,
            scaling="std",
            mode="common_channel",
            decoder_mode="common_channel",
            **extra,
        )
    )


def _tspulse():
    from tsfm_public.models.tspulse import TSPulseConfig
    from tsfm_public.models.tspulse.modeling_tspulse import TSPulseForClassification

    return TSPulseForClassification(
        TSPulseConfig(
            context_length=512,
            patch_length=16,
            patch_stride=16,
            d_model=48,
            num_layers=8,
            fuse_fft=True,
            patch_register_tokens=8,
            mask_block_length=16,
            num_targets=2,
            dropout=0.3,
            head_dropout=0.3,
        )
    )


@pytest.fixture(scope="session")
def hub_dir(tmp_path_factory) -> tuple[Path, dict]:
    """The cache, built once per session (small random weights, fixed seed)."""
    torch.manual_seed(0)
    hub = tmp_path_factory.mktemp("hf_home") / "hub"
    commits = {}
    for (repo, rev), shape in TTM_SNAPSHOTS.items():
        extra = {"resolution_prefix_tuning": True} if repo.startswith("test-org") else {}
        model = _ttm(*shape, **extra)
        assert (
            repo.startswith("test-org")
            or sum(p.numel() for p in model.parameters())
            == {512: 805_280, 1024: 2_964_960 if shape[1] == 128 else 946_336, 1536: 3_081_120}[shape[0]]
        )
        commits[(repo, rev)] = _write_snapshot(hub, repo, rev, model)
    commits[(TSP, TSP_REV)] = _write_snapshot(hub, TSP, TSP_REV, _tspulse())
    return hub, commits


@pytest.fixture
def hub(hub_dir, monkeypatch):
    """The session's cache as huggingface_hub's cache (it reads HF_HOME at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_dir[0]))
    return hub_dir


def _config(*overrides: str):
    from tests.helpers.configs import compose_config

    return to_config(compose_config(list(overrides)))


def _snapshot_backbone(hub_dir, key) -> dict:
    hub, commits = hub_dir
    repo, rev = key
    state = load_file(
        str(hub / f"models--{repo.replace('/', '--')}" / "snapshots" / commits[key] / "model.safetensors")
    )
    return {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_resolves_its_revision_and_loads_strictly(hub, preset):
    c = _config(f"backbone={preset}")
    src = resolve_pretrained(c.backbone.pretrained_path, c.backbone.revision)
    repo, rev = PRESETS[preset]
    assert (src.source, src.commit) == (f"{repo}@{rev}", hub[1][(repo, rev)])
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert (init.kind, init.source, init.commit) == ("pretrained", f"{repo}@{rev}", src.commit)
    assert init.dropped_tensors > 0 and init.tags()["backbone.commit"] == src.commit
    expected = _snapshot_backbone(hub, (repo, rev))
    got = model.backbone.model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    random, _ = build_model(
        _config(f"backbone={preset}", "backbone.pretrained_path=null").backbone, num_channels=1, num_classes=2
    )  # the same architecture, random weights
    assert {k: v.shape for k, v in random.backbone.model.state_dict().items()} == {k: v.shape for k, v in got.items()}


def test_dropout_comes_from_the_checkpoint_unless_overridden(hub):
    def rates(model):
        return {round(m.p, 3) for m in model.modules() if hasattr(m, "p") and "Dropout" in type(m).__name__}

    model, _ = build_model(_config("backbone=ttm_r2_512").backbone, num_channels=1, num_classes=2)
    assert rates(model.backbone) == {0.4} and rates(model.head) == {0.4}
    model, _ = build_model(
        _config("backbone=ttm_r2_512", "backbone.dropout=0.1", "backbone.head_dropout=0.05").backbone,
        num_channels=1,
        num_classes=2,
    )
    assert rates(model.backbone) == {0.1} and rates(model.head) == {0.05}


def test_head_only_run_fine_tunes_the_snapshot_weights_and_records_them(hub, tmp_path):
    from tests.helpers.configs import compose_config
    from ttm_experiments.cli.train import train

    runs = tmp_path / "runs"
    train(
        compose_config(
            [
                "backbone=ttm_r2_512",
                "schedule=head_only",
                f"paths.runs_dir={runs}",
                "experiment_name=hub",
                "dataset.n_subjects=10",
                "dataset.windows_per_subject=12",
                "trainer.max_epochs_per_stage=1",
                "trainer.progress=false",
                f"hydra.run.dir={tmp_path / 'out'}",
            ]
        )
    )
    best = torch.load(next(runs.rglob("best.pt")), weights_only=True)
    expected = _snapshot_backbone(hub, (R2, "main"))
    assert all(torch.equal(best["backbone"][k], v) for k, v in expected.items())  # loaded, and frozen in head_only
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    run = client.search_runs(
        [client.get_experiment_by_name("hub").experiment_id], filter_string="tags.init = 'pretrained'"
    )[0]
    tags = run.data.tags
    assert tags["backbone.source"] == f"{R2}@main" and tags["backbone.commit"] == hub[1][(R2, "main")]
    assert int(tags["backbone.dropped_tensors"]) > 0


@pytest.mark.parametrize(
    "overrides, words",
    [
        (
            ["backbone=ttm_r2_1024", "backbone.revision=2048-96-r2"],
            ["2048-96-r2", R2, f"hf download {R2} --revision 2048-96-r2"],
        ),
        (
            ["backbone=ttm_r1_1024", f"backbone.pretrained_path={R2}", "backbone.revision=main"],
            ["backbone.context_length: config 1024, checkpoint 512", "ttm_r2_512"],
        ),
        (
            ["backbone=ttm_r2_512", f"backbone.pretrained_path={TSP}", f"backbone.revision={TSP_REV}"],
            ["'tspulse'", "tspulse_r1"],
        ),
        (
            ["backbone=ttm_r1_1024", "backbone.pretrained_path=test-org/ttm-prefix", "backbone.revision=null"],
            ["resolution_prefix_tuning=True", "frequency token"],
        ),
    ],
)
def test_checkpoints_the_suite_cannot_use_are_clear_errors(hub, overrides, words):
    with pytest.raises(CheckpointError) as err:
        build_model(_config(*overrides).backbone, num_channels=1, num_classes=2)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_directory_without_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="without config.json"):
        build_model(
            _config("backbone=ttm_r1_1024", f"backbone.pretrained_path={tmp_path}", "backbone.revision=null").backbone,
            num_channels=1,
            num_classes=2,
        )


def test_a_revision_with_a_local_path_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="backbone.revision=null"):
        resolve_pretrained(str(tmp_path), "main")


def test_tspulse_blocks_selection_and_gradients():
    c = _config("backbone=tspulse_r1", "backbone.pretrained_path=null", "unfreeze.last_n=2")
    model = build_classifier(c.backbone, num_channels=1, num_classes=2)
    blocks = find_blocks(model.backbone.model, c.unfreeze)
    assert [b.name for b in blocks] == [f"encoder_block.mixers.{i}" for i in range(8)]
    report, selected = apply_stage(model, c.unfreeze, scope="partial", stage="partial")
    assert [b.name for b in selected] == ["encoder_block.mixers.6", "encoder_block.mixers.7"]
    assert report.blocks_unfrozen == [b.name for b in selected]
    model.train()
    model(torch.randn(4, 1, 512)).sum().backward()
    trained = {
        n.split(".mixers.")[1].split(".")[0]
        for n, p in model.backbone.model.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0 and ".mixers." in n
    }
    frozen_grads = [n for n, p in model.backbone.model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert trained == {"6", "7"} and not frozen_grads
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)


@pytest.mark.slow  # ~25 s on 2 idle cores: three stages of a 512-context TSPulse
def test_tspulse_smoke_run(hub, tmp_path):
    from tests.helpers.configs import compose_config
    from ttm_experiments.cli.train import train

    objective = train(
        compose_config(
            [
                "backbone=tspulse_r1",
                f"paths.runs_dir={tmp_path / 'runs'}",
                "dataset.n_subjects=10",
                "dataset.windows_per_subject=12",
                "trainer.progress=false",
                "trainer.max_epochs_per_stage=1",
                "trainer.max_batches=2",
                f"hydra.run.dir={tmp_path / 'out'}",
            ]
        )
    )
    assert 0.0 <= objective <= 1.0


def test_patchtst_dropout_reaches_its_dropout_modules():
    c = _config("backbone=patchtst", "backbone.dropout=0.15")
    model = build_classifier(c.backbone, num_channels=1, num_classes=2)
    cfg = model.backbone.model.config
    assert (cfg.attention_dropout, cfg.positional_dropout, cfg.ff_dropout) == (0.15, 0.15, 0.15)
    rates = {round(m.p, 3) for m in model.backbone.modules() if "Dropout" in type(m).__name__ and hasattr(m, "p")}
    assert 0.15 in rates


def test_importing_the_package_leaves_hf_hub_offline_unset():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = (
        "import os, ttm_experiments.cli.common, ttm_experiments.cli.train, ttm_experiments.cli.inspect_blocks; "
        "print(os.environ.get('HF_HUB_OFFLINE'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_fine_tuning_rates_apply_only_to_weights_that_were_loaded():
    from ttm_experiments.training.finetune import finetune_rates
    from ttm_experiments.training.stages import plan_stages

    c = _config("schedule=progressive", "optim.lr=1e-3")
    stages = plan_stages(c.schedule, lr=c.optim.lr, ssl_lr=c.optim.ssl_lr, max_epochs=0)
    same, optim = finetune_rates(stages, c.optim, init="random")
    assert same == stages and optim.layer_decay == 1.0
    tuned, optim = finetune_rates(stages, c.optim, init="ssl")
    assert [s.backbone_lr for s in tuned] == pytest.approx([0.1 * s.backbone_lr for s in stages])
    assert [s.head_lr for s in tuned] == [s.head_lr for s in stages] and optim.layer_decay == 0.8
    off = _config("optim.pretrained_backbone_lr_scale=1.0", "optim.pretrained_layer_decay=null").optim
    assert finetune_rates(stages, off, init="pretrained") == (stages, off)


@pytest.mark.parametrize(
    "overrides",
    [("backbone=ttm_r2_1024",), ("backbone=ttm_r2_1024", "schedule=linear_probe")],
    ids=["fine-tune", "linear-probe"],
)
def test_weights_missing_from_the_cache_stop_the_run_before_the_data_is_read(tmp_path, monkeypatch, smoke, overrides):
    """Offline with an empty cache: the run names the snapshot and its download command. The dataset root does not
    exist either; had the data been read first, that would have been the error."""
    from huggingface_hub import constants

    from ttm_experiments.cli.train import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    cfg = smoke(*overrides, "dataset=butppg", f"dataset.root={tmp_path / 'no-such-dataset'}")
    with pytest.raises(CheckpointError, match=f"not in the Hugging Face cache .*hf download {R2} --revision 1024-96"):
        train(cfg)
