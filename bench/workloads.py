"""What the benchmark runs: one model, one data set, and three ways to train it.

- `run_bare`: the limit. A bare PyTorch loop over pre-batched tensors: forward, weighted cross-entropy,
  backward, gradient clipping, fused AdamW, warm-up/cosine schedule; per epoch the validation logits in
  inference mode (no metrics, no logging).
- `run_suite`: the suite's real `Trainer` (training/loop.py) with a real `MlflowTracker` on a SQLite store:
  shuffled batches by index, per-step NaN guard, train and validation metrics, MLflow per epoch, best state.
- `run_hf`: `transformers.Trainer` on the same model, data, batch size, epochs, optimizer and schedule,
  evaluating every epoch with the same metrics and reporting to MLflow (`report_to=["mlflow"]`).

All three return wall seconds and training samples per second (training windows x epochs / wall time).
Shared by the CPU benchmark and its GPU mode (`bench.py --gpu`).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ttm_experiments.config.schema import (
    BackboneConf,
    OptimConf,
    StageConf,
    TrainerConf,
    TrainScope,
    UnfreezeConf,
)
from ttm_experiments.data.base import WindowSet
from ttm_experiments.models.backbones import Classifier, build_classifier
from ttm_experiments.training.loop import LoopResult, Trainer
from ttm_experiments.training.losses import class_weights
from ttm_experiments.training.optim import Precision, warmup_cosine
from ttm_experiments.training.stages import StagePlan

CLASS_NAMES = ("poor", "good")
LR, WEIGHT_DECAY, WARMUP, CLIP = 1e-3, 0.01, 0.1, 1.0
PATTERN = r"encoder\.mlp_mixer_encoder\.mixers\.\d+\.mixer_layers\.\d+"
BLOCKS = UnfreezeConf(pattern=PATTERN)

# conf/backbone/ttm_1024.yaml and ttm_tiny.yaml, with the default head (conf/backbone schema defaults)
TTM_1024 = BackboneConf(
    name="ttm_1024",
    context_length=1024,
    patch_length=64,
    patch_stride=64,
    d_model=192,
    num_layers=2,
    adaptive_patching_levels=3,
    dropout=0.2,
    block_pattern=PATTERN,
)
TTM_TINY = BackboneConf(
    name="ttm_tiny",
    context_length=128,
    patch_length=16,
    patch_stride=16,
    d_model=16,
    num_layers=2,
    adaptive_patching_levels=2,
    dropout=0.1,
    block_pattern=PATTERN,
    head_hidden=16,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(spec: BackboneConf = TTM_1024, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_classifier(spec, num_channels=1, num_classes=len(CLASS_NAMES))


def random_windows(n: int, length: int, seed: int, good_fraction: float = 0.21) -> WindowSet:
    """Windows of the synthetic data's shape and label balance: camera-like level plus noise (float32)."""
    rng = np.random.default_rng(seed)
    signals = (150 + 3 * rng.standard_normal((n, 1, length))).astype(np.float32)
    labels = (rng.random(n) < good_fraction).astype(np.int64)
    labels[:2] = (0, 1)  # both classes present, so AUROC is defined
    return WindowSet(signals, labels, np.arange(n, dtype=np.int64), CLASS_NAMES, fs=length / 10.0)


@dataclass
class Data:
    train: WindowSet
    val: WindowSet


def settings(
    device: torch.device, amp: bool = False, compile: bool = False, batch_size: int = 64, eval_batch_size: int = 256
) -> dict:
    """The Trainer's settings: conf/optim/default.yaml and conf/trainer/default.yaml, without progress bars."""
    return {
        "optim": OptimConf(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            weight_decay=WEIGHT_DECAY,
            warmup_frac=WARMUP,
            grad_clip=CLIP,
        ),
        "trainer": TrainerConf(amp=amp, progress=False, compile=compile),
        "unfreeze": BLOCKS,
        "device": device,
        "seed": 0,
    }


@dataclass
class Timing:
    wall_s: float
    samples_per_s: float
    epoch_s: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def steady(self, n_train: int) -> float:
        """Samples per second over the epochs after the first (compile and warm-up excluded)."""
        rest = self.epoch_s[1:]
        return n_train * len(rest) / sum(rest) if rest else self.samples_per_s


def run_bare(
    data: Data,
    epochs: int,
    device: torch.device,
    amp: bool = False,
    compile: bool = False,
    scope: str = "full",
    batch_size: int = 64,
    eval_batch_size: int = 256,
    spec: BackboneConf = TTM_1024,
) -> Timing:
    model = build_model(spec).to(device)
    if scope == "head":  # what a hand-written head-only stage does: freeze the backbone, same loop
        model.backbone.requires_grad_(False)
    xs = torch.from_numpy(data.train.signals).to(device).split(batch_size)
    ys = torch.from_numpy(data.train.labels).to(device).split(batch_size)
    xv = torch.from_numpy(data.val.signals).to(device).split(eval_batch_size)
    weight = class_weights(data.train.labels, len(CLASS_NAMES)).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=device.type in ("cpu", "cuda"))
    sched = warmup_cosine(opt, epochs * len(xs), WARMUP)
    step_model = torch.compile(model) if compile else model
    epoch_s = []
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in zip(xs, ys):
            with Precision(device, amp).autocast():
                loss = loss_fn(step_model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode(), Precision(device, amp).autocast():
            logits = torch.cat([step_model(x).float() for x in xv])
        logits.cpu()
        sync(device)
        epoch_s.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return Timing(wall, epochs * len(data.train) / wall, epoch_s)


def mlflow_available() -> bool:
    """The GPU image has no MLflow: there both loops run without tracking (said in the results)."""
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


class NoTracker:
    """Stands in for MlflowTracker where MLflow is not installed (the GPU machine): same calls, no I/O."""

    run_id = stage_run_id = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class SuiteRunner:
    """The suite's Trainer on a MLflow SQLite store that is created once (outside the timed part)."""

    def __init__(self, store_dir: Path, experiment: str = "bench-suite"):
        if not mlflow_available():
            self.tracker = NoTracker()
            return
        from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

        self.tracker = MlflowTracker(f"sqlite:///{store_dir}/mlflow.db", experiment)

    def run(
        self,
        data: Data,
        epochs: int,
        device: torch.device,
        amp: bool = False,
        compile: bool = False,
        scope: str = "full",
        batch_size: int = 64,
        spec: BackboneConf = TTM_1024,
    ) -> Timing:
        model = build_model(spec)
        self.tracker.start_run("bench", {"bench": "suite"})
        marks: list[float] = []
        sync(device)
        start = time.perf_counter()
        trainer = Trainer(
            model,
            data.train,
            data.val,
            **settings(device, amp, compile, batch_size),
            tracker=self.tracker,
            epoch_hooks=(lambda record: marks.append(time.perf_counter()),),
        )
        result = LoopResult()
        stage = StagePlan(StageConf(name=scope, train=TrainScope(scope)), epochs=epochs, head_lr=LR, backbone_lr=LR)
        trainer.run_stage(stage, result, 0)
        sync(device)
        wall = time.perf_counter() - start
        self.tracker.end_run()
        epoch_s = list(np.diff([start] + marks))
        return Timing(
            wall, epochs * len(data.train) / wall, epoch_s, {"val_auroc": result.history[-1].val.get("auroc", math.nan)}
        )

    def evaluate(
        self,
        data: Data,
        x: WindowSet,
        device: torch.device,
        amp: bool = False,
        eval_batch_size: int = 256,
        spec: BackboneConf = TTM_1024,
    ) -> Timing:
        """`Trainer.evaluate`: logits in inference mode, metrics and loss (what every epoch and the test do)."""
        trainer = Trainer(
            build_model(spec),
            data.train,
            data.val,
            **settings(device, amp, eval_batch_size=eval_batch_size),
            tracker=self.tracker,
        )
        xt, yt = trainer.tensors(x)
        sync(device)
        start = time.perf_counter()
        trainer.evaluate(xt, yt)
        wall = time.perf_counter() - start
        return Timing(wall, len(x) / wall)


def run_bare_eval(
    x: WindowSet, device: torch.device, amp: bool = False, eval_batch_size: int = 256, spec: BackboneConf = TTM_1024
) -> Timing:
    model = build_model(spec).to(device).eval()
    chunks = torch.from_numpy(x.signals).to(device).split(eval_batch_size)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), Precision(device, amp).autocast():
        logits = torch.cat([model(c).float() for c in chunks])
    logits.cpu()
    sync(device)
    wall = time.perf_counter() - start
    return Timing(wall, len(x) / wall)


class _WindowDataset(torch.utils.data.Dataset):
    """What a `transformers.Trainer` user writes: one dict per window, collated by the default collator."""

    def __init__(self, ws: WindowSet):
        self.x, self.y = torch.from_numpy(ws.signals), torch.from_numpy(ws.labels)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class _HFClassifier(nn.Module):
    """The same classifier, returning the loss the way `transformers.Trainer` expects."""

    def __init__(self, model: Classifier, weight: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.model(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels, weight=self.weight)
        return out


def prepare_hf_tracking(store_dir: Path, experiment: str = "bench-hf") -> None:
    """Point `transformers`' MLflow callback at a SQLite store and create it (outside the timed part)."""
    if not mlflow_available():
        return
    import mlflow

    uri = f"sqlite:///{store_dir}/mlflow-hf.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_EXPERIMENT_NAME"] = experiment
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment)


def run_hf(
    data: Data,
    epochs: int,
    device: torch.device,
    amp: bool = False,
    batch_size: int = 64,
    eval_batch_size: int = 256,
    spec: BackboneConf = TTM_1024,
) -> Timing:
    from transformers import Trainer as HFTrainer
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from ttm_experiments.metrics.classification import classification_metrics, softmax

    weight = class_weights(data.train.labels, len(CLASS_NAMES))
    model = _HFClassifier(build_model(spec), weight)
    steps = epochs * math.ceil(len(data.train) / batch_size)
    marks: list[float] = []

    def metrics(pred) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        marks.append(time.perf_counter())
        return classification_metrics(pred.label_ids, softmax(logits), CLASS_NAMES)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=eval_batch_size,
            num_train_epochs=epochs,
            learning_rate=LR,
            weight_decay=WEIGHT_DECAY,
            lr_scheduler_type="cosine",
            warmup_steps=int(WARMUP * steps),
            max_grad_norm=CLIP,
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="epoch",
            report_to=["mlflow"] if mlflow_available() else "none",
            disable_tqdm=True,
            use_cpu=device.type == "cpu",
            bf16=amp and device.type == "cuda",
            seed=0,
            dataloader_num_workers=0,
        )
        sync(device)
        start = time.perf_counter()
        trainer = HFTrainer(
            model=model,
            args=args,
            train_dataset=_WindowDataset(data.train),
            eval_dataset=_WindowDataset(data.val),
            compute_metrics=metrics,
        )
        trainer.remove_callback(PrinterCallback)  # the suite prints nothing either (trainer.progress=false)
        trainer.train()
        sync(device)
        wall = time.perf_counter() - start
    return Timing(wall, epochs * len(data.train) / wall, list(np.diff([start] + marks)))
