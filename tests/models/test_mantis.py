"""Mantis backbones (models/mantis.py) against a Hugging Face cache laid out as huggingface_hub lays it, written by
mantis-tsfm's own `save_pretrained` (PyTorchModelHubMixin) with the public shapes; the hub is the one thing mocked
(no network here). Pins: the block list, which tensors load (every one, the projector dropped and counted), that
they stay put through a head-only step, the refusals (another shape, another window length, self-supervised
stages), and that a trained Mantis classifier reloads from its checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.models.test_hub import _config, _write_snapshot
from tests.models.test_zoo_ttm_r3 import _head_only_step_keeps_backbone
from ttm_experiments.errors import CheckpointError, ConfigError
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.pretrained import build_model
from ttm_experiments.models.unfreeze import apply_stage

V2, V1 = "paris-noah/MantisV2", "paris-noah/Mantis-8M"
V2_COMMIT = "99fe0f548960e272fbfa4b82fd9b5b5956779dfd"  # the revision mantis_v2 pins
NARROW = "test-org/mantis-narrow"  # a MantisV2 of another width
LAYERS = [f"transf_unit.transformer.layers.{i}" for i in range(6)]
# parameters of the public networks as mantis-tsfm 1.1.0 documents them (MantisV2's docstring: 4,188,672; Mantis-8M:
# 8.1 M) less the pre-training projector (LayerNorm(256) + Linear(256, 256) = 66,304), which the backbone drops
BACKBONE_PARAMS = {"mantis_v2": 4_188_672 - 66_304, "mantis_8m": 8_103_936 - 66_304}


@pytest.fixture(scope="module")
def mantis_hub(tmp_path_factory):
    from mantis.architecture import Mantis8M, MantisV2

    torch.manual_seed(5)
    hub = tmp_path_factory.mktemp("hf_home_mantis") / "hub"
    # a commit hash as revision: huggingface_hub reads snapshots/<hash>/ directly, with no refs/ entry
    MantisV2(device="cpu").save_pretrained(hub / f"models--{V2.replace('/', '--')}" / "snapshots" / V2_COMMIT)
    commits = {
        (V2, V2_COMMIT): V2_COMMIT,
        # the legacy class the 8M checkpoint was published with: its transformer is saved as `vit_unit.*`
        (V1, "main"): _write_snapshot(hub, V1, "main", Mantis8M(device="cpu")),
        (NARROW, "main"): _write_snapshot(hub, NARROW, "main", MantisV2(hidden_dim=128, device="cpu")),
    }
    return hub, commits


@pytest.fixture
def hub(mantis_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(mantis_hub[0]))
    return mantis_hub


def _saved(hub, repo: str, revision: str = "main") -> dict:
    """The snapshot's tensors under the names MantisV1/V2 give them (legacy `vit_unit.` -> `transf_unit.`)."""
    folder, commits = hub
    path = folder / f"models--{repo.replace('/', '--')}" / "snapshots" / commits[(repo, revision)] / "model.safetensors"
    return {k.replace("vit_unit.", "transf_unit.", 1): v for k, v in load_file(str(path)).items()}


@pytest.mark.parametrize("preset", ["mantis_v2", "mantis_8m"])
def test_one_block_per_transformer_layer_and_the_public_parameter_count(preset):
    from tests.helpers.configs import compose_config
    from ttm_experiments.cli.inspect_blocks import format_text, inspect_model

    info = inspect_model(compose_config([f"backbone={preset}", "backbone.pretrained_path=null"]))
    assert [b["name"] for b in info["blocks"]] == LAYERS
    assert info["selected"] == LAYERS[-2:] and info["backbone_params"] == BACKBONE_PARAMS[preset]
    assert "transf_unit.transformer.layers.5" in format_text(info)


def test_each_channel_is_embedded_alone_with_its_mean_and_std():
    c = _config("backbone=mantis_v2", "backbone.pretrained_path=null", "dataset.channels=2")
    backbone = build_classifier(c.backbone, num_channels=2, num_classes=2).backbone.eval()
    x = torch.randn(3, 2, 512) * 4 + 7
    with torch.no_grad():
        hidden, loc, scale = backbone(x)
        alone = backbone.model(x[:, 1:2])  # the library's network on channel 1 only
    assert hidden.shape == (3, 2, 1, 256)
    torch.testing.assert_close(hidden[:, 1, 0], alone)
    torch.testing.assert_close(loc, x.mean(-1))
    torch.testing.assert_close(scale, x.std(-1) + 1e-5)


def test_a_partial_stage_trains_exactly_the_last_layers_and_the_head():
    c = _config("backbone=mantis_v2", "backbone.pretrained_path=null")
    model = build_classifier(c.backbone, num_channels=1, num_classes=2)
    apply_stage(model, c.unfreeze, scope="partial", stage="partial")
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 512)), torch.tensor([0, 1, 0, 1])).backward()
    got = {n for n, p in model.backbone.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got and all(n.startswith(tuple(LAYERS[-2:])) for n in got)
    assert {n.split(".")[3] for n in got} == {"4", "5"}
    assert all(p.grad is not None for p in model.head.parameters())


def test_v2_snapshot_loads_every_tensor_and_a_head_only_step_leaves_them(hub):
    c = _config("backbone=mantis_v2")
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert (init.kind, init.source, init.commit) == ("pretrained", f"{V2}@{V2_COMMIT}", V2_COMMIT)
    saved = _saved(hub, V2, V2_COMMIT)
    expected = {k: v for k, v in saved.items() if not k.startswith("prj.")}
    assert init.dropped_tensors == len(saved) - len(expected) == 4  # the projector's LayerNorm and Linear
    got = model.backbone.model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    _head_only_step_keeps_backbone(model, c, expected, context=512)


def test_a_legacy_mantis_8m_snapshot_loads_every_tensor_into_mantis_v1(hub):
    c = _config("backbone=mantis_8m")
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert type(model.backbone.model).__name__ == "MantisV1" and init.dropped_tensors == 4
    expected = {k: v for k, v in _saved(hub, V1).items() if not k.startswith("prj.")}
    got = model.backbone.model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    _head_only_step_keeps_backbone(model, c, expected, context=512)


def test_a_checkpoint_of_another_width_is_refused_with_both_values(hub):
    c = _config("backbone=mantis_v2", f"backbone.pretrained_path={NARROW}", "backbone.revision=null")
    with pytest.raises(CheckpointError) as err:
        build_model(c.backbone, num_channels=1, num_classes=2)
    assert "hidden_dim (backbone.d_model): config 256, checkpoint 128" in str(err.value)


def test_a_checkpoint_of_the_other_version_is_refused_naming_its_preset(hub):
    c = _config("backbone=mantis_v2", f"backbone.pretrained_path={V1}", "backbone.revision=null")
    with pytest.raises(CheckpointError, match="MantisV1 checkpoint .* Fix: backbone=mantis_8m"):
        build_model(c.backbone, num_channels=1, num_classes=2)


def test_v2_weights_take_another_multiple_of_32_with_32_tokens(hub):
    c = _config(
        "backbone=mantis_v2", "backbone.context_length=1024", "backbone.patch_length=32", "backbone.patch_stride=32"
    )
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert init.kind == "pretrained" and model(torch.randn(2, 1, 1024)).shape == (2, 2)


@pytest.mark.parametrize(
    ("preset", "overrides", "shown"),
    [
        (
            "mantis_v2",
            ["backbone.context_length=1024"],
            "num_patches (context_length/patch_length): config 64, checkpoint 32",
        ),
        (
            "mantis_8m",
            ["backbone.context_length=1024", "backbone.patch_length=32", "backbone.patch_stride=32"],
            "seq_len (backbone.context_length): config 1024, checkpoint 512",
        ),
    ],
)
def test_a_window_length_the_checkpoint_cannot_take_is_refused(hub, preset, overrides, shown):
    c = _config(f"backbone={preset}", *overrides)
    with pytest.raises(CheckpointError) as err:
        build_model(c.backbone, num_channels=1, num_classes=2)
    msg = str(err.value)
    assert shown in msg and "Fix: backbone.context_length=512 with patch_length=patch_stride=16" in msg


def test_a_context_mantis_cannot_cut_into_tokens_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="multiple of 32 .* backbone.context_length=512"):
        _config("backbone=mantis_v2", "backbone.pretrained_path=null", "backbone.context_length=500")


def test_mantis_version_is_required_for_mantis_and_refused_elsewhere():
    with pytest.raises(ConfigError, match="without backbone.mantis_version"):
        _config("backbone=mantis_v2", "backbone.pretrained_path=null", "backbone.mantis_version=null")
    for other, kind in (("ttm_tiny", "ttm"), ("baseline_sqi", "sqi")):  # a baseline builds no network at all
        with pytest.raises(ConfigError, match=f"mantis_version=v2 is set but backbone={other} is {kind}"):
            _config(f"backbone={other}", "backbone.mantis_version=v2")


def test_masking_for_self_supervised_stages_is_refused():
    c = _config("backbone=mantis_v2", "backbone.pretrained_path=null")
    backbone = build_classifier(c.backbone, num_channels=1, num_classes=2).backbone
    x = torch.randn(2, 1, 512)
    with pytest.raises(ConfigError, match="self-supervised stages cannot run on it"):
        backbone(x, observed=torch.ones_like(x, dtype=torch.bool))


@pytest.mark.slow  # ~20 s on 2 busy cores: a debug=tiny progressive run of a 4 M-parameter backbone
def test_a_trained_mantis_reloads_from_its_checkpoint_and_logs_like_every_run(smoke, runs_dir):
    import numpy as np

    from tests.helpers.runs import runs_of
    from ttm_experiments.cli.train import train
    from ttm_experiments.models.inference import load_classifier, score

    train(smoke("backbone=mantis_v2", "backbone.pretrained_path=null", "trainer.num_threads=1"))
    _, (run,), _ = runs_of(runs_dir, "ttm-ppg-quality-smoke")
    m = run.data.metrics
    for key in ("auroc", "acc/poor", "acc/good", "balanced_acc"):
        assert np.isfinite(m[f"test/{key}"])
    assert run.data.tags["init"] == "random"
    ckpt_path = next(runs_dir.glob("outputs/**/best.pt"))
    trained = load_classifier(ckpt_path)
    saved = torch.load(ckpt_path, weights_only=True)
    assert saved["architecture"]["mantis"]["version"] == "v2"
    got = trained.model.backbone.model.state_dict()
    assert set(got) == set(saved["backbone"]) and all(torch.equal(got[k], v) for k, v in saved["backbone"].items())
    probs = score(trained, np.random.default_rng(0).normal(size=(5, 1, 512)).astype(np.float32))
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1)
    # the same file as a starting point (backbone.pretrained_path=best.pt): its backbone, strictly
    c = _config("backbone=mantis_v2", f"backbone.pretrained_path={ckpt_path}", "backbone.revision=null")
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    got = model.backbone.model.state_dict()
    assert init.source == str(ckpt_path) and all(torch.equal(got[k], v) for k, v in saved["backbone"].items())


@pytest.mark.slow  # ~10 s: features of a 4 M-parameter backbone for every window, once
def test_a_linear_probe_on_the_snapshot_logs_its_source_and_metrics(hub, smoke, runs_dir):
    import numpy as np

    from tests.helpers.runs import runs_of
    from ttm_experiments.cli.train import train

    train(smoke("backbone=mantis_v2", "schedule=linear_probe", "trainer.num_threads=1"))
    _, (run,), _ = runs_of(runs_dir, "ttm-ppg-quality-smoke")
    m, tags = run.data.metrics, run.data.tags
    assert all(np.isfinite(m[f"test/{k}"]) for k in ("auroc", "acc/poor", "acc/good"))
    source = (tags["init"], tags["backbone.source"], tags["backbone.dropped_tensors"])
    assert source == ("pretrained", f"{V2}@{V2_COMMIT}", "4")  # the projector's 4 tensors


@pytest.mark.parametrize("schedule", ["pretrain", "hybrid"])
def test_a_self_supervised_schedule_is_refused_before_any_data_or_run(smoke, runs_dir, schedule):
    from ttm_experiments.cli.train import train

    with pytest.raises(ConfigError, match=f"self-supervised stages .* of schedule={schedule} cannot run on it"):
        train(smoke("backbone=mantis_v2", "backbone.pretrained_path=null", f"schedule={schedule}"))
    assert not list(runs_dir.rglob("mlflow.db")) and not list(runs_dir.rglob("*.pt"))  # nothing opened or written


@pytest.mark.slow  # ~20 s each on 2 busy cores: two batches per stage, evaluation, the logged model
@pytest.mark.parametrize("schedule", ["head_only", "full"])
def test_the_other_supervised_schedules_run(smoke, schedule):
    from ttm_experiments.cli.train import train

    cfg = smoke("backbone=mantis_v2", "backbone.pretrained_path=null", f"schedule={schedule}", "trainer.max_batches=2")
    assert 0.0 <= train(cfg) <= 1.0


def test_a_mantis_model_reads_amplitude_and_says_so():
    """Mantis's tokens encode each patch's raw mean and std: other units change its answer, and the model (its
    MLflow metadata, ttm-predict's amplitude check) must say so, unlike a TTM whose scaler removes them."""
    import numpy as np

    from ttm_experiments.models.inference import TrainedModel, score

    torch.manual_seed(0)
    c = _config("backbone=mantis_v2", "backbone.pretrained_path=null")
    trained = TrainedModel(
        build_classifier(c.backbone, num_channels=1, num_classes=2).eval(), ("poor", "good"), 512, 1, 10.0, "test"
    )
    x = np.random.default_rng(0).normal(size=(8, 1, 512)).astype(np.float32)
    assert np.abs(score(trained, x) - score(trained, 1000 * x + 50)).max() > 1e-3
    assert trained.uses_amplitude and trained.amplitude_reader[0].startswith("the mantis backbone encodes")


def test_a_logged_mantis_model_requires_mantis_tsfm_and_a_ttm_model_does_not():
    from importlib.metadata import version

    from ttm_experiments.tracking.pyfunc import requirements

    assert f"mantis-tsfm=={version('mantis-tsfm')}" in requirements("mantis")
    assert not any(r.startswith("mantis-tsfm") for r in requirements("ttm"))
