"""The typed schema every composed config is validated against.

Hydra merges the YAML files of `conf/` into these dataclasses (registered as `train_schema` and
`inspect_schema` in the ConfigStore), so an unknown key or a value of the wrong type fails at compose time
with the key's name. `OmegaConf.to_object` turns the composed config into these typed objects, which the
builders receive; nothing below the CLI sees a DictConfig. This module sits at the bottom of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, NamedTuple, Optional

from omegaconf import MISSING

from ttm_experiments.errors import ConfigError  # a leaf module: no import circle


class BackboneKind(str, Enum):
    ttm = "ttm"
    tspulse = "tspulse"  # IBM's TSPulse (granite-tsfm), made for classification
    patchtst = "patchtst"
    # Amazon's Chronos-Bolt encoder (chronos-forecasting), frozen features for schedule=linear_probe only:
    # models/chronos.py builds it, and refuses every trained schedule
    chronos_bolt = "chronos_bolt"
    # the Mantis classification foundation models (mantis-tsfm), one embedding per channel: models/mantis.py builds
    # them (backbone.mantis_version picks the architecture)
    mantis = "mantis"
    sqi = "sqi"  # baseline: signal-quality indices + logistic regression
    site = "site"  # baseline: recording site alone (BUT-PPG)


class UnfreezeStrategy(str, Enum):
    pattern = "pattern"
    depth = "depth"


class OnEmpty(str, Enum):
    error = "error"
    warn = "warn"


class OnNested(str, Enum):
    error = "error"
    outer = "outer"
    inner = "inner"


class StageKind(str, Enum):
    supervised = "supervised"
    ssl_masked = "ssl_masked"  # masked-patch reconstruction
    ssl_contrastive = "ssl_contrastive"  # InfoNCE over augmented views + the masked loss


class StageData(str, Enum):
    target = "target"  # the training split of `dataset`
    pretrain = "pretrain"  # the unlabeled corpus `dataset.pretrain`


class TrainScope(str, Enum):
    """Which backbone parameters a stage trains (the head always trains)."""

    head = "head"
    partial = "partial"
    full = "full"


class SchedulerKind(str, Enum):
    """`optim.scheduler`: the learning-rate schedule of each supervised stage."""

    warmup_cosine = "warmup_cosine"  # linear warm-up over optim.warmup_frac of the steps, then cosine decay to 0
    onecycle = "onecycle"  # torch's OneCycleLR: peak = each group's rate at optim.warmup_frac, momentum cycled


class LossKind(str, Enum):
    weighted_ce = "weighted_ce"
    ce = "ce"
    focal = "focal"


class FrozenMode(str, Enum):
    """What modules without trainable parameters do while a stage trains."""

    eval = "eval"  # evaluation mode: no dropout, BatchNorm statistics fixed
    train = "train"  # training mode like the rest (the old behaviour, on purpose)


class SubjectFrom(str, Enum):
    key = "key"  # a window file's subject / subject_id (or a BUT-PPG record id); a file without one is refused
    record = "record"  # a file without a subject key is its own subject (the run is tagged)


class CollapseAction(str, Enum):
    warn = "warn"  # warn at once, tag the run, go on
    stop = "stop"  # also end the stage early


class DatasetLoader(str, Enum):
    """`dataset.loader`: which loader reads a dataset option (`dataset.name` only names it in logs and MLflow)."""

    synthetic = "synthetic"  # simulated PPG (data/synthetic.py)
    butppg = "butppg"  # BUT-PPG v2 as downloaded (data/butppg.py)
    windows = "windows"  # the predecessor's preprocessed .npz windows (data/windows.py)
    vitaldb = "vitaldb"  # a directory of VitalDB .vital files (data/vitaldb.py)


class NonFinite(str, Enum):
    """`dataset.nonfinite`: what to do with windows holding NaN/Inf or a constant signal."""

    error = "error"  # stop before training, with the count
    drop = "drop"  # drop them (counted in the log)


class MissingRecords(str, Enum):
    """`dataset.missing_records` (BUT-PPG): an annotated record without its folder."""

    error = "error"
    skip = "skip"  # skip it (counted in the report)


class OnOutOfRange(str, Enum):
    """`predict.on_ood`: windows whose amplitude lies outside the training windows' (`models/amplitude.py`)."""

    error = "error"
    warn = "warn"
    ignore = "ignore"


class TimeUnit(str, Enum):
    """`predict.time_unit`: what a number of `predict.time_column` counts, or ISO 8601 date-times."""

    s = "s"
    ms = "ms"
    us = "us"
    datetime = "datetime"


class InspectFormat(str, Enum):
    text = "text"
    json = "json"


class Direction(str, Enum):
    """`search.direction`: the way the Optuna study optimises `optimized_metric`."""

    minimize = "minimize"
    maximize = "maximize"


class PrunerKind(str, Enum):
    """The pruner names of a `search.pruner` spec (`<name>[:key=value,...]`); `none` reports but never prunes."""

    median = "median"
    percentile = "percentile"
    hyperband = "hyperband"
    successive_halving = "successive_halving"
    threshold = "threshold"
    wilcoxon = "wilcoxon"
    none = "none"


def parse_pruner(spec: object, key: str = "pruner") -> tuple[PrunerKind, str]:
    """A pruner spec (`median:n_warmup_steps=4`, `none`, null) -> its PrunerKind and the argument text after `:`;
    the error names `key` (`search.pruner` in a job's config)."""
    text = str(spec if spec is not None else "none").strip()
    name, _, args = text.partition(":")
    name = name.strip().lower()
    name = "none" if name in ("", "nop", "null") else name
    try:
        return PrunerKind(name), args
    except ValueError:
        raise ConfigError(
            f"{key} '{text}': unknown pruner '{name}'; use one of {sorted(k.value for k in PrunerKind)}"
        ) from None


class AmpMode(str, Enum):
    """`trainer.amp`: autocast off, bf16 autocast, or fp16 autocast with a gradient scaler."""

    off = "false"
    bf16 = "bf16"
    fp16 = "fp16"


_AMP_SPELLINGS = {
    "false": AmpMode.off,
    "off": AmpMode.off,
    "none": AmpMode.off,
    "true": AmpMode.bf16,
    "bf16": AmpMode.bf16,
    "bfloat16": AmpMode.bf16,
    "fp16": AmpMode.fp16,
    "float16": AmpMode.fp16,
}


def parse_amp(value: object) -> AmpMode:
    """`trainer.amp` in any accepted spelling (false/true from YAML or the command line, bf16, fp16) -> AmpMode."""
    mode = _AMP_SPELLINGS.get(str(getattr(value, "value", value)).strip().lower())
    if mode is None:
        raise ConfigError(
            f"trainer.amp={value!r} is not a precision. Fix: trainer.amp=false, trainer.amp=bf16 or "
            "trainer.amp=fp16 (fp16 trains with a gradient scaler; `true` means bf16)."
        )
    return mode


# The MLflow experiment of ttm-train and ttm-report (`experiment_name`); one place, read by both schemas
EXPERIMENT_NAME = "ttm-ppg-quality"


class MantisVersion(str, Enum):
    """`backbone.mantis_version`: which mantis-tsfm architecture a `kind: mantis` backbone is."""

    v1 = "v1"  # MantisV1 (paris-noah/Mantis-8M, MantisPlus): sinusoidal positions, GELU MLP, window length fixed
    v2 = "v2"  # MantisV2 (paris-noah/MantisV2): rotary positions, SwiGLU MLP, RMSNorm


class HeadKind(str, Enum):
    """`backbone.head`: the classification head over the backbone's hidden state."""

    suite = "suite"  # mean- and max-pooled patches (+ location and log-scale) and an MLP; every backbone
    tspulse = "tspulse"  # TSPulse's own decoder + classification head (models/tspulse_head.py); TSPulse only


class TSPulseDecoderMode(str, Enum):
    common_channel = "common_channel"  # each channel decoded alone
    mix_channel = "mix_channel"  # the decoder also mixes channels


class GatedActivation(str, Enum):
    softmax = "softmax"
    sigmoid = "sigmoid"


@dataclass
class TSPulseHeadConf:
    """`backbone.tspulse_head.*` (only with backbone.head=tspulse): granite-tsfm's TSPulseConfig options of its
    classification decoder and head; the defaults are that config's, experiment=tspulse_recipe sets the recipe's."""

    gated_attention_activation: GatedActivation = GatedActivation.softmax  # head_gated_attention_activation
    decoder_mode: TSPulseDecoderMode = TSPulseDecoderMode.common_channel  # decoder_mode
    head_reduce_d_model: Optional[int] = None  # the head first projects each patch's features to this width
    # each channel repeated this many times before the patch encodings, the decoder mixing the copies (1 = off)
    channel_virtual_expand_scale: int = 1
    # TSPulse's own masking of training windows (its mask_type, up to this share; never in evaluation): only in
    # stages that train part of the backbone (a head-only stage runs the frozen backbone in evaluation mode); null off
    mask_ratio: Optional[float] = None


@dataclass
class BackboneConf:
    """`backbone.*`. The defaults are the ttm_1024 architecture (`conf/backbone/ttm_1024.yaml`): a preset states
    only what differs, and `ttm-train --cfg job` prints every value."""

    name: str = MISSING
    kind: BackboneKind = BackboneKind.ttm
    context_length: int = 1024
    patch_length: int = 64
    patch_stride: int = 64
    d_model: int = 192
    num_layers: int = 2
    adaptive_patching_levels: int = 3
    expansion_factor: int = 2
    # null: from the checkpoint's config.json (the library's default for a random backbone)
    dropout: Optional[float] = 0.2
    # PatchTST only
    num_attention_heads: int = 4
    ffn_dim: int = 256
    # regex (re.fullmatch on module names, relative to the backbone) that makes one block per match; the default is
    # the TTM's: one block per mixer layer (6 blocks in ttm_1024). Levels as blocks instead (3 blocks):
    #   unfreeze.pattern='encoder\.mlp_mixer_encoder\.mixers\.\d+'
    block_pattern: str = r"encoder\.mlp_mixer_encoder\.mixers\.\d+\.mixer_layers\.\d+"
    # a ttm-train checkpoint, a local Hugging Face directory, or a hub id (at `revision`; null = main)
    pretrained_path: Optional[str] = None
    revision: Optional[str] = None
    # classification head; head_dropout null: the checkpoint's head_dropout (0.2 for a random backbone)
    head_hidden: int = 64
    head_dropout: Optional[float] = 0.2
    # the head also reads each window's location and log-scale (what the scaler removed): then the answer depends on
    # the recording's units. Off by default: on the default data it adds nothing (test AUROC -0.003 [-0.014, +0.009],
    # 3 seeds x 5 folds) and in other units it collapses balanced accuracy to 0.5 (docs/results.md)
    scale_features: bool = False
    # FastDropout (models/dropout.py: same semantics, a numba mask kernel) on CPU; false: stock nn.Dropout, no numba
    fast_dropout: bool = True
    # the head: suite (above: head_hidden, head_dropout, scale_features) or tspulse (TSPulse's decoder + head from
    # tsfm_public, options in tspulse_head, dropout head_dropout; its head reads location and scale itself)
    head: HeadKind = HeadKind.suite
    tspulse_head: TSPulseHeadConf = field(default_factory=TSPulseHeadConf)
    # kind=mantis only (required there, refused elsewhere): the mantis-tsfm architecture, v1 or v2 (models/mantis.py)
    mantis_version: Optional[MantisVersion] = None


@dataclass
class UnfreezeConf:
    strategy: UnfreezeStrategy = UnfreezeStrategy.pattern
    last_n: int = 2
    pattern: Optional[str] = None
    keywords: List[str] = field(default_factory=lambda: ["layer", "block"])
    max_dots: int = 1
    on_empty: OnEmpty = OnEmpty.error
    on_nested: OnNested = OnNested.error
    frozen_mode: FrozenMode = FrozenMode.eval


@dataclass
class DatasetConf:
    name: str = MISSING  # the dataset's name in logs, run tags and MLflow dataset names
    loader: DatasetLoader = MISSING  # which loader reads it: a variant of a dataset is one YAML file
    root: Optional[str] = None  # the directory of a real dataset (butppg, windows, vitaldb): required there
    fold: int = 0
    n_folds: int = 5
    # decides the folds, the synthetic data and the pretraining corpus's synthetic subjects (`seed` does not)
    split_seed: int = 0
    # window length and rate follow from the backbone: window_length = context_length samples over duration_s
    window_length: int = "${backbone.context_length}"  # type: ignore[assignment]
    duration_s: float = 10.0
    channels: int = 1
    # synthetic generator
    n_subjects: int = 60
    windows_per_subject: int = 40
    good_fraction: float = 0.21
    label_noise: float = 0.03
    nonfinite: NonFinite = NonFinite.error  # windows holding NaN/Inf or a constant signal
    # real datasets (butppg, windows, vitaldb)
    task: str = "quality"  # the label: quality | motion (butppg); any scalar key of the .npz files (windows)
    # butppg camera channels: R, G, B or several; dataset.channels must equal their number
    ppg_channels: List[str] = field(default_factory=lambda: ["R"])
    missing_records: MissingRecords = MissingRecords.error  # butppg: an annotated record without its folder
    subject_from: SubjectFrom = SubjectFrom.key  # windows: where a window's subject comes from
    allow_shared_subjects: bool = False  # windows: accept a predefined split that puts a subject in two splits
    track: str = "SNUADC/PLETH"  # vitaldb: the waveform track read from each .vital file
    # the unlabeled corpus of `data: pretrain` stages, by its loader: synthetic (unlabeled mode) or vitaldb
    pretrain: DatasetLoader = DatasetLoader.synthetic
    pretrain_root: Optional[str] = None
    pretrain_subjects: int = 100
    # label efficiency (data/label_fraction.py): train on a stratified, nested subset of the training subjects
    # (validation and test untouched): a share of them, or a count (not both)
    label_fraction: float = 1.0
    label_subjects: Optional[int] = None


@dataclass
class StageConf:
    name: str = MISSING
    kind: StageKind = StageKind.supervised
    train: TrainScope = TrainScope.head
    epochs: int = 1
    # learning rates are optim.lr times these factors
    head_lr_scale: float = 1.0
    backbone_lr_scale: float = 0.1
    # self-supervised stages only
    data: StageData = StageData.target
    mask_ratio: float = 0.4
    stft_weight: float = 0.0
    contrastive_weight: float = 1.0
    temperature: float = 0.1


@dataclass
class ScheduleConf:
    name: str = MISSING
    stages: List[StageConf] = field(default_factory=list)
    # skip the stages before this one (with backbone.pretrained_path: rerun only fine-tuning)
    start_at: Optional[str] = None
    # schedule=linear_probe (training/linear_probe.py): no stages; the frozen backbone's pooled embeddings and a
    # logistic regression per C of this grid, the C chosen on validation by `optimized_metric`. Empty: not a probe
    probe_c_grid: List[float] = field(default_factory=list)


@dataclass
class OptimConf:
    """AdamW per stage; a stage's rates are lr x its head_lr_scale / backbone_lr_scale."""

    lr: float = 1e-3
    # true: granite-tsfm's LR finder (valley rule) on the first supervised stage sets optim.lr (training/lr_finder.py);
    # a key of its own because the float node optim.lr cannot also hold the word "find"
    lr_find: bool = False
    lr_find_steps: int = 100  # the finder's batches (its sweep 1e-7..10)
    ssl_lr: float = 1e-3  # base rate of the self-supervised stages (optim.lr is the fine-tuning rate)
    weight_decay: float = 0.01
    batch_size: int = 64
    eval_batch_size: int = 256
    # optional layer-wise learning-rate decay over the unfrozen blocks (1.0 = off)
    layer_decay: float = 1.0
    # a backbone that starts from pretrained or SSL weights (training/finetune.py): supervised backbone rates times
    # this, and this layer decay instead of layer_decay (null = layer_decay); 1.0 and null = the random-init rates
    pretrained_backbone_lr_scale: float = 0.1
    pretrained_layer_decay: Optional[float] = 0.8
    warmup_frac: float = 0.1
    # supervised stages (self-supervised ones always warm up then decay by cosine); onecycle is what granite-tsfm's
    # TSPulse classification recipe uses (its pct_start: torch's default 0.3, so optim.warmup_frac=0.3 to match)
    scheduler: SchedulerKind = SchedulerKind.warmup_cosine
    grad_clip: float = 1.0
    loss: LossKind = LossKind.weighted_ce
    focal_gamma: float = 2.0
    balanced_sampler: bool = False


@dataclass
class TrainerConf:
    device: str = "auto"  # auto | cpu | cuda | mps
    # mixed precision: false | bf16 | fp16 (fp16 with a gradient scaler; `true` is the old spelling of bf16).
    # A string, not AmpMode: `trainer.amp=false` / `true` reach OmegaConf as booleans, which an Enum node refuses
    # (it takes member names and ints only); a str node keeps them as "False"/"True", and `spec.to_config` turns
    # every spelling into AmpMode once (`parse_amp`), so nothing below the CLI sees the string
    amp: str = "false"
    # torch.compile the training and evaluation steps. Off: on CPU it was slower than eager and compiling takes
    # minutes on 2 cores (BENCHMARKS.md); on a GPU it pays off only on runs much longer than the compile time
    compile: bool = False
    num_threads: int = 0  # 0 = torch default
    progress: bool = True
    collapse_threshold: float = 0.05  # a class whose val accuracy falls below this is "collapsed"
    collapse_action: CollapseAction = CollapseAction.warn
    # stop a supervised stage after this many epochs without a strictly better `optimized_metric` within the stage
    # (0 = off); the best checkpoint is still chosen across all epochs run
    early_stopping_patience: int = 0
    # caps for smoke runs and tests; 0 = no cap
    max_batches: int = 0  # train batches per epoch
    max_epochs_per_stage: int = 0
    stage_cache: bool = True  # reuse stages computed by earlier runs (paths.stage_cache_dir); false = always train


@dataclass
class TrackingConf:
    # MLflow on SQLite under runs/ (MLflow 3 refuses the plain ./mlruns file store); a server URL works too:
    #   tracking.uri=http://mlflow.example.org:5000
    uri: str = "sqlite:///${paths.runs_dir}/mlflow.db"
    log_system_metrics: bool = False
    # seconds between system-metric samples while a run lives; one more sample is taken when it starts and ends
    system_metrics_interval_s: float = 10.0
    # a registered-model name: the run's MLflow model (its best checkpoint) becomes a new version of it
    register_model: Optional[str] = None


@dataclass
class PathsConf:
    runs_dir: str = "runs"  # everything a run writes goes below it (git-ignored)
    cache_dir: str = "${paths.runs_dir}/cache"
    stage_cache_dir: str = "${paths.runs_dir}/stage_cache"


@dataclass
class InspectConf:
    format: InspectFormat = InspectFormat.text


@dataclass
class ReportConf:
    """The `report.*` node of `ttm-report`: which MLflow runs to compare and where the table and plots go."""

    experiment: Optional[str] = None  # MLflow experiment; null = experiment_name
    sweep: Optional[str] = None  # only the runs of one sweep (its `sweep` tag: the output folder) or Optuna study
    out_dir: Optional[str] = None  # null = ${paths.runs_dir}/reports/<experiment>[/<sweep>]
    max_runs: int = 500  # newest runs read from MLflow
    top: int = 8  # runs drawn in the per-epoch curves (best first)
    log_to_mlflow: bool = True  # also log the report as a run (tag ttm.kind=report) of <experiment>-reports
    compare: Optional[str] = (
        None  # paired comparisons over this setting (schedule, backbone, optim.lr); null = each varying one
    )
    baseline: Optional[str] = None  # the value differences are taken against; null = the first in sorted order
    # the model zoo's report (report/zoo.py): test AUROC vs dataset.label_fraction per backbone and schedule, and
    # paired tables against the best TTM and the SQI baseline, instead of the run table
    zoo: bool = False


@dataclass
class ReportConfig:
    """`ttm-report`'s own config (`conf/report.yaml`): the store to read and the report settings, nothing of
    training."""

    tracking: TrackingConf = field(default_factory=TrackingConf)
    paths: PathsConf = field(default_factory=PathsConf)
    report: ReportConf = field(default_factory=ReportConf)
    experiment_name: str = EXPERIMENT_NAME


@dataclass
class PredictConf:
    """The `predict.*` node of `ttm-predict`: the model, the input (or a `dataset=` config) and the output."""

    model: str = MISSING  # an MLflow run id, models:/<name>/<version> (or models:/<model_id>), or a best.pt path
    # the CSV written (atomically): one row per window; null = <paths.runs_dir>/predictions/<input or dataset
    # name>-<date>-<time>.csv (printed)
    output: Optional[str] = None
    # a text table (CSV, TSV, ...: delimiter and header sniffed), an .npz (key `signal`) or a WFDB record (path
    # without extension); data/recordings.py
    input: Optional[str] = None
    column: Optional[str] = None  # a table's signal column: its name or 0-based index (null: the only one)
    time_column: Optional[str] = None  # a table's clock column (name or index): gives the rate (median step)
    time_unit: Optional[TimeUnit] = None  # what the clock counts; null = detected where unambiguous
    channels: Optional[List[str]] = None  # WFDB signal names to use (null: all, when they match the model)
    fs: Optional[float] = None  # Hz, for files without a rate (a table without a clock; an .npz without `fs`)
    hop_s: Optional[float] = None  # seconds between window starts; null = the window length (no overlap)
    batch_size: int = 256
    # windows whose location or scale lies outside the training windows' (a model with backbone.scale_features
    # reads them, so another unit saturates it): error = refuse before scoring, warn = a count per recording
    on_ood: OnOutOfRange = OnOutOfRange.warn


@dataclass
class PredictConfig:
    """`ttm-predict`'s own config (`conf/predict.yaml`); `dataset` is set only with `dataset=<name>`."""

    predict: PredictConf = field(default_factory=PredictConf)
    dataset: Optional[DatasetConf] = None
    tracking: TrackingConf = field(default_factory=TrackingConf)
    paths: PathsConf = field(default_factory=PathsConf)


@dataclass
class SearchConf:
    """Set by the Optuna sweeper on each job it launches; null in plain runs and grids."""

    study_name: Optional[str] = None
    storage: Optional[str] = None
    trial_number: Optional[int] = None
    # a pruner spec, `<name>[:key=value,...]` (PrunerKind names the pruners): a string, not an Enum, because it
    # carries the pruner's arguments; `spec.validate` checks its name
    pruner: Optional[str] = None
    direction: Direction = Direction.maximize
    tuned_in: Optional[str] = None  # the study this config's hyperparameters come from (its best command sets it)
    # inner cross-validation (data/inner_folds.py): each trial of the study is scored on `inner_folds` subject-wise
    # folds of the outer train+val subjects (the sweeper launches one job per fold, setting `inner_fold`), reports
    # fold j as step j and the study optimises their mean; null: the outer validation fold scores each trial
    inner_folds: Optional[int] = None
    inner_fold: Optional[int] = None
    # the sweeper's refit of study `tuned_in`'s best trial on the outer split (after an inner-CV study): tagged
    # `optuna.study`/`optuna.refit`, its test AUROC is the study's outer estimate in the nested-CV report
    refit: bool = False


@dataclass
class TrainConfig:
    backbone: BackboneConf = field(default_factory=BackboneConf)
    unfreeze: UnfreezeConf = field(default_factory=UnfreezeConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    optim: OptimConf = field(default_factory=OptimConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    paths: PathsConf = field(default_factory=PathsConf)
    search: SearchConf = field(default_factory=SearchConf)
    # the value a sweep or an Optuna study optimises: a per-epoch metric, taken at the best epoch
    # in an Optuna study (hydra/sweeper=optuna) also a list, one objective each: the job selects its best epoch
    # by the first, the study gets each at that epoch (search/sweeper.py)
    optimized_metric: Any = "val/auroc"
    # continue a killed run: its output directory or MLflow run id
    resume: Optional[str] = None
    seed: int = 0
    experiment_name: str = EXPERIMENT_NAME  # MLflow experiment
    run_name: Optional[str] = None


@dataclass
class InspectConfig(TrainConfig):
    """`ttm-inspect`: the training config plus how to print; `ttm-train` has no `inspect` key."""

    inspect: InspectConf = field(default_factory=InspectConf)


METRIC_SPLITS = ("train", "val")  # the per-epoch metrics: what best-epoch selection, pruning and sweeps read


class Metric(NamedTuple):
    """A parsed `optimized_metric`: which split's per-epoch dict, which key, and which way is better."""

    split: str
    key: str
    direction: str  # "minimize" (a loss) or "maximize"

    @property
    def name(self) -> str:
        return f"{self.split}/{self.key}"

    def better(self, value: float, than: float) -> bool:
        """Is `value` strictly better than `than` (NaN never is)?"""
        return value < than if self.direction == "minimize" else value > than

    @property
    def worst(self) -> float:
        return math.inf if self.direction == "minimize" else -math.inf


def parse_metric(name: str) -> Metric:
    """`optimized_metric` -> Metric, e.g. 'val/auroc' -> ('val', 'auroc', 'maximize'); only per-epoch metrics.

    The one definition of the selection metric's direction: a key ending in `loss` is minimised, others maximised."""
    if not isinstance(name, str):
        raise ConfigError(
            f"optimized_metric={list(name) if hasattr(name, '__iter__') else name!r} is not one metric: a run selects "
            "its best epoch by one (e.g. val/auroc). Several objectives are for an Optuna study: ttm-train -m "
            "hydra/sweeper=optuna 'optimized_metric=[val/auroc,val/balanced_acc]' "
            "'hydra.sweeper.direction=[maximize,maximize]'"
        )
    split, _, key = name.partition("/")
    if split not in METRIC_SPLITS or not key:
        raise ConfigError(f"optimized_metric={name!r} must be a per-epoch metric such as 'val/auroc'")
    return Metric(split, key, "minimize" if key.endswith("loss") else "maximize")


DEFAULT_SELECTION = parse_metric("val/auroc")  # `optimized_metric`'s default, parsed


def register_schema() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="inspect_schema", node=InspectConfig)
    ConfigStore.instance().store(name="report_schema", node=ReportConfig)
    ConfigStore.instance().store(name="predict_schema", node=PredictConfig)
