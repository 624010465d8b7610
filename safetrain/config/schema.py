"""The typed config schema, registered in Hydra's ConfigStore.

YAML under configs/ only fills values; these dataclasses decide which keys exist and what type
each has, so `trainer.batch_size=abc` or `trainer.bacth_size=64` fails at composition, before
TensorFlow is imported. Enums (not Literal: OmegaConf rejects it) list the allowed choices.
Names that pick from a registry (optimizer, loss, layer types) stay `str` because registries are
open to user extensions; they are checked in `safetrain.experiment.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


class Source(Enum):
    digits = "digits"              # embedded: scikit-learn's 8x8 digits via a TFDS builder
    tfds = "tfds"                  # any TFDS catalog name (dataset.name)
    image_folder = "image_folder"  # one sub-folder per class (dataset.path)
    image_table = "image_table"    # a CSV/TSV/JSON Lines table of image paths and labels (dataset.table)
    idx = "idx"                    # MNIST-family IDX .gz files (dataset.path)


# The sources read through the image-folder machinery (scan, decode-once cache, duplicates, carved
# splits, suspect labels): a folder is a table built from the tree.
FILE_SOURCES = (Source.image_folder, Source.image_table)
# trainer.export_formats: saved_model first (always: predict and the other formats' preprocessing use it)
EXPORT_FORMATS = ("saved_model", "keras", "tflite", "tflite_int8", "onnx")


class ImageDType(Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Normalization(Enum):
    scale_0_1 = "scale_0_1"          # x / 255
    minus_one_one = "minus_one_one"  # x / 127.5 - 1
    standardize = "standardize"      # per-channel (x - mean) / std from the training split
    scale_0_255 = "scale_0_255"      # the source's range mapped to [0, 255] (backbones with built-in rescaling)
    none = "none"                    # raw pixel values as floats
    backbone = "backbone"            # what model.backbone's weights expect (models.backbones)


class LabelEncoding(Enum):
    sparse = "sparse"        # integer class ids; loss sparse_categorical_crossentropy
    one_hot = "one_hot"      # float vectors; loss categorical_crossentropy
    multi_hot = "multi_hot"  # a 0/1 per label (dataset.task=multi_label); loss binary_crossentropy


class TaskKind(Enum):
    single_label = "single_label"  # one class per image: a softmax over the classes
    multi_label = "multi_label"    # a set of labels per image (maybe empty): a sigmoid per label, thresholds


MAX_LABELS = 63  # multi_label: a label set travels through the cache and the pipeline as one int64 bit mask


class ResizePolicy(Enum):
    error = "error"              # a size mismatch is a spec error (exit 2)
    bilinear = "bilinear"        # resize with bilinear interpolation
    pad_or_crop = "pad_or_crop"  # centre pad or crop, no interpolation


class ChannelPolicy(Enum):
    error = "error"      # a channel mismatch is a spec error (exit 2)
    convert = "convert"  # gray->RGB, RGBA->RGB, RGB->gray


class BadExamplePolicy(Enum):
    error = "error"  # the first bad example stops the run (exit 3)
    skip = "skip"    # bad examples are skipped, counted and listed in errors.jsonl


class OnNan(Enum):
    stop = "stop"            # exit 5 at the first non-finite loss
    skip_step = "skip_step"  # drop that step's update and go on


class OnOom(Enum):
    error = "error"
    halve_batch = "halve_batch"


class OnDeadGradient(Enum):
    warn = "warn"    # report variables whose gradient is exactly zero over the first steps
    error = "error"  # exit 4 instead


class Precision(Enum):
    auto = "auto"
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


class Schedule(Enum):
    constant = "constant"    # optimizer.learning_rate throughout (after any warmup)
    cosine = "cosine"        # cosine decay to optimizer.min_learning_rate by the last step
    linear = "linear"        # linear decay to optimizer.min_learning_rate by the last step
    step = "step"            # times optimizer.decay_factor at each epoch in optimizer.milestones
    one_cycle = "one_cycle"  # learning_rate/25 up to learning_rate over 30% of the steps, cosine down
    plateau = "plateau"      # times optimizer.decay_factor after optimizer.plateau_patience epochs without eval gain


class Mode(Enum):
    max = "max"  # higher is better
    min = "min"  # lower is better


class Flip(Enum):
    none = "none"
    horizontal = "horizontal"  # left-right (not for digits or text)
    vertical = "vertical"      # upside down
    both = "both"


class Crop(Enum):
    none = "none"
    random_resized = "random_resized"  # a box of augment.crop_scale of the area, resized back (Inception-style)


class OnLeakage(Enum):
    warn = "warn"                      # train anyway; each pair in errors.jsonl, counts in report.json
    error = "error"                    # stop before training (exit 3) naming the pairs
    drop_from_eval = "drop_from_eval"  # keep the train copy, drop the eval/test one


class ExifOrientation(Enum):
    apply = "apply"    # turn photos upright as cameras recorded (TensorFlow's decoder ignores it)
    ignore = "ignore"  # the pixels as stored


class Sampling(Enum):
    shuffle = "shuffle"    # each example once per epoch, in a seeded order
    balanced = "balanced"  # every class equally often (minority classes repeated, majority ones thinned)


class ClassWeights(StrEnum):
    """dataset.class_weights by name (it may also be a list of weights, so the field stays `Any`)."""

    none = "none"
    balanced = "balanced"


AUTO = "auto"  # trainer.steps_per_loop chosen from the measured step time (or a whole number of steps)


class StrategyKind(Enum):
    auto = "auto"
    one_device = "one_device"
    mirrored = "mirrored"
    multi_worker = "multi_worker"


@dataclass
class ImageConfig:
    """The image spec the pipeline must deliver to the model (the model's input is derived from it)."""

    height: int = 28                     # pixels; the model's input height
    width: int = 28                      # pixels; the model's input width
    channels: int = 1                    # 1 (gray), 3 (RGB) or 4 (RGBA)
    dtype: ImageDType = ImageDType.float32  # dtype of the model input (mixed precision casts inside)
    normalization: Normalization = Normalization.scale_0_1  # from the source's pixel range


@dataclass
class SplitsConfig:
    """TFDS split strings (slicing allowed, e.g. `train[:90%]`); eval may be null to skip it."""

    train: str = "train"                 # the split trained on
    eval: Optional[str] = None           # evaluated after each epoch; null = no per-epoch evaluation
    test: Optional[str] = "test"         # evaluated once at the end (never used to choose anything)


@dataclass
class TableColumns:
    """dataset=image_table: which column holds what; null = the first column of a common name."""

    path: Optional[str] = None           # null: path, filepath, filename, file, image, image_path, image_id, id, ...
    label: Optional[str] = None          # null: label, labels, class, class_name, category, categories, target, tags
    group: Optional[str] = None          # null: a column named group, if any (rows of one group stay in one split)
    split: Optional[str] = None          # null: a column named split, if any (train, val, test per row)
    labels: Optional[List[str]] = None   # multi_label: one 0/1 column per label (instead of a label-set column)


@dataclass
class DatasetConfig:
    source: Source = Source.digits       # where the examples come from (pipelines.sources.registry)
    name: str = "digits"                 # TFDS catalog name when source=tfds
    path: Optional[str] = None           # folder for image_folder / idx; image_table: the images' root (null: the table's folder)
    table: Optional[str] = None          # image_table: the .csv, .tsv or .jsonl file
    columns: TableColumns = field(default_factory=TableColumns)  # image_table: the columns by name
    extension: Optional[str] = None      # image_table: appended to paths without one (Kaggle ids: png)
    classes: Optional[List[str]] = None  # image_table: the labels allowed, in class-id order; null = the labels found
    task: TaskKind = TaskKind.single_label      # multi_label: each image has a set of labels (image_table)
    label_separator: str = "|"           # multi_label: between the labels of a set in the label column (cat|dog)
    allow_empty_labels: bool = False     # multi_label: an image with no label is a good example (counted), not a bad row
    local_idx_dirs: List[str] = field(default_factory=list)  # tfds: IDX folders tried before downloading
    data_dir: Optional[str] = None       # TFDS data dir; null = TFDS default (~/tensorflow_datasets)
    download: bool = True                # false: never touch the network, use prepared data only
    splits: SplitsConfig = field(default_factory=SplitsConfig)  # split strings per role
    image: ImageConfig = field(default_factory=ImageConfig)     # the declared model input
    resize: ResizePolicy = ResizePolicy.error             # what to do with images of another size
    channel_policy: ChannelPolicy = ChannelPolicy.error   # what to do with images of other channels
    on_bad_example: BadExamplePolicy = BadExamplePolicy.error  # stop on a bad example, or skip it
    max_pixels: int = 40_000_000         # images above this are bad examples (checked before decoding)
    max_file_bytes: int = 209_715_200    # image files above this (200 MiB) are bad examples (never opened)
    pixel_range: Optional[List[float]] = None  # [min, max] of raw pixels; null = from the dtype (uint8: 0..255)
    num_classes: Optional[int] = None    # from the source when null
    label_encoding: LabelEncoding = LabelEncoding.sparse  # must agree with trainer.loss
    shuffle_buffer: int = 10_000         # examples in the shuffle buffer (the order is seeded per epoch)
    class_weights: Any = ClassWeights.none.value  # loss weight per class: none | balanced | [w0, w1, ...] by class id
    sampling: Sampling = Sampling.shuffle  # balanced: draw every class equally often (not with class_weights)
    cache: bool = True                   # cache decoded examples in memory when they fit
    cache_dir: Optional[str] = None      # image_folder: scan and pixel cache; null = <data_dir>/safetrain_image_folders
    on_leakage: OnLeakage = OnLeakage.warn  # image_folder: the same image in two splits
    near_duplicate_radius: Any = AUTO     # auto (calibrated on the folder) | bits of a 256-bit pHash | null: exact only
    near_duplicate_similarity: float = 0.98  # a near candidate counts when its 32x32 thumbnails correlate this much
    allow_missing_classes: bool = False  # image_folder: a split lacking a class warns instead of stopping
    exif_orientation: ExifOrientation = ExifOrientation.apply  # image_folder: camera rotation tags
    min_pixels: Optional[int] = None     # image_folder: images with fewer pixels are bad examples; null = no floor
    max_examples: Optional[int] = None   # use only the first N examples of each split (smoke runs)
    suspect_min_probability: float = 0.8  # image_folder: suspect_labels.csv: misclassified eval/test files this sure


class Pooling(Enum):
    avg = "avg"  # global average of the backbone's last feature map
    max = "max"  # global max


@dataclass
class BackboneConfig:
    """A pretrained Keras Applications backbone before model.layers (models.backbones); off while
    `name` is null. A node rather than null by default, so `model.backbone.name=...` merges."""

    name: Optional[str] = None           # registry: see models.backbones (BACKBONES); null = no backbone
    weights: Optional[str] = "imagenet"  # imagenet (Keras' download and cache) | null (random) | a .h5 file path
    pooling: Pooling = Pooling.avg       # how the last feature map becomes one vector
    trainable: bool = False              # true: the backbone trains from the first step
    fine_tune_from_epoch: Optional[int] = None  # frozen before this epoch, trained from it; null = never
    fine_tune_learning_rate: Optional[float] = None  # the backbone's own rate; null = learning_rate/10 when unfrozen
    fine_tune_blocks: Optional[int] = None  # train only the top K blocks (and the layers after them); null = all


@dataclass
class ModelConfig:
    """Layer specs use Keras argument names; the head (num_classes logits, float32) is added."""

    name: str = "custom"                 # recorded in report.json and HParams
    layers: List[Dict[str, Any]] = field(default_factory=list)  # layer specs, each {type: NAME, ...}
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # a pretrained backbone first; see its fields


@dataclass
class OptimizerConfig:
    name: str = "adam"                   # registry: see safetrain.train.optimizers (OPTIMIZERS)
    learning_rate: float = 1e-3          # the peak learning rate; optimizer.schedule shapes it over the run
    clipnorm: Optional[float] = None     # clip each gradient to this norm; null = no clipping
    weight_decay: float = 0.0            # decoupled weight decay; 1-D weights (biases, normalization) excluded
    schedule: Schedule = Schedule.constant  # the learning rate over the steps (safetrain.train.schedules)
    warmup_epochs: float = 0.0           # linear warmup from ~0 to learning_rate first (not with one_cycle)
    min_learning_rate: float = 0.0       # where cosine, linear and one_cycle end
    milestones: List[float] = field(default_factory=list)  # schedule=step: epochs where the rate drops
    decay_factor: float = 0.1            # schedule=step/plateau: the rate is multiplied by this at each drop
    plateau_patience: int = 2            # schedule=plateau: epochs without an eval improvement before a drop
    plateau_metric: str = "loss"         # schedule=plateau: the eval split's metric to watch (trainer.metrics names)


@dataclass
class EarlyStoppingConfig:
    """Stop when the eval metric has not improved for `patience` epochs (the eval split, never test).
    Off while `patience` is null: a node rather than null by default, because OmegaConf cannot merge
    `trainer.early_stopping={patience: 3}` into a null node."""

    metric: Optional[str] = None        # the eval metric to watch, also what keep_best chooses on (loss, accuracy,
                                        # macro_f1, map, ...: safetrain.train.metrics); evaluated even if
                                        # trainer.metrics leaves it out; null = the task's: accuracy | map
    mode: Optional[Mode] = None         # null = the metric's own direction (accuracy: max, loss: min)
    patience: Optional[int] = None      # epochs without an improvement before the run stops; null = off
    min_delta: float = 0.0              # an improvement must beat the best by more than this


@dataclass
class TrainerConfig:
    epochs: int = 3                      # passes over the training split (with time_budget: at most)
    batch_size: int = 128                # global batch; per-replica = batch_size / replicas
    eval_batch_size: Optional[int] = None  # null = batch_size
    max_steps: Optional[int] = None      # stop after this many train steps (across epochs)
    time_budget: Any = None              # 90s | 15m | 2h: the steps that fit, planned from measured costs; null: off
    seed: int = 0                        # weights, shuffles and dropout are functions of it
    deterministic: bool = False          # op determinism: reproducible, slower
    jit_compile: bool = False            # XLA; about 2x slower on CPU, so off by default
    loss: str = "sparse_categorical_crossentropy"  # registry: see safetrain.train.optimizers (LOSSES)
    label_smoothing: float = 0.0         # targets 1 - s + s/K and s/K (sparse and one-hot labels alike)
    metrics: Optional[List[str]] = None  # eval and test, beside the loss (safetrain.train.metrics); null = the
                                         # task's: [accuracy, macro_f1] | [map, micro_f1, macro_f1, subset_accuracy,
                                         # hamming_loss]
    threshold_precision: Optional[float] = None  # multi_label: each label's threshold reaches this eval precision
                                         # (the lowest such); null = the threshold with the best eval F1
    early_stopping: Optional[EarlyStoppingConfig] = field(default_factory=EarlyStoppingConfig)  # see its fields
    keep_best: Optional[bool] = None     # test and export the best eval epoch's weights; null = when eval exists
    ema: Optional[float] = None          # decay of a weights' moving average for eval/test/export; null = off
    checkpoint_every_steps: int = 200    # also at epoch ends (at most every 10 s), at the end, on SIGTERM/SIGINT
    checkpoint_every_seconds: Optional[float] = None  # also save when this long has passed since the last save
    log_every_steps: int = 10            # TensorBoard scalars and log lines
    steps_per_loop: Any = AUTO           # train steps per graph call (int dividing log/checkpoint_every_steps) | auto
    on_nan: OnNan = OnNan.stop           # a non-finite loss or gradient: stop (exit 5) or skip the step
    on_oom: OnOom = OnOom.error          # out of memory: stop (exit 4) or retry with half the batch
    min_batch_size: int = 1              # on_oom=halve_batch stops halving below this
    export: bool = True                  # write <run dir>/export: a SavedModel for safetrain.predict
    hparams: bool = True                 # list the run in TensorBoard's HParams table (never dry runs; +debug=tiny: no)
    export_formats: List[str] = field(default_factory=lambda: ["saved_model", "keras"])  # also: tflite,
                                         # tflite_int8, onnx; each proven on the test files (export.parity)
    calibrate: bool = True               # temperature scaling fitted on eval, folded into the export
    serving_target_accuracy: Optional[float] = None  # an "unsure" threshold reaching this eval accuracy
    serving_resize: ResizePolicy = ResizePolicy.bilinear  # other sizes at serving if dataset.resize=error
    on_dead_gradient: OnDeadGradient = OnDeadGradient.warn  # exactly-zero gradients over the first steps
    lr_find: bool = False                # a learning-rate range test instead of training (python -m safetrain.lr_find)
    lr_find_steps: int = 100             # steps of the range test (fewer if the loss diverges first)
    lr_find_start: float = 1e-7          # its first learning rate
    lr_find_end: float = 10.0            # its last; the rate grows exponentially in between


@dataclass
class RandAugmentConfig:
    """Keras' RandAugment; off while num_ops is 0 (a node, not null: OmegaConf cannot merge
    `augment.rand_augment={num_ops: 2}` into a null node)."""

    num_ops: int = 0                     # transforms drawn per image from RandAugment's list; 0 = off
    magnitude: float = 0.5               # their strength, in (0, 1]


@dataclass
class AugmentConfig:
    """Training-batch augmentation with Keras' preprocessing layers (pipelines.augment); all off by default."""

    crop: Crop = Crop.none               # random_resized: crop crop_scale of the area, resize to the declared size
    crop_scale: List[float] = field(default_factory=lambda: [0.25, 1.0])  # the crop's share of the area, in (0, 1]
    crop_ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333])  # its width/height aspect range
    flip: Flip = Flip.none               # RandomFlip
    rotation: float = 0.0                # RandomRotation: up to this fraction of a full turn (0.05 = 18 degrees)
    zoom: float = 0.0                    # RandomZoom: in or out by up to this fraction
    translate: float = 0.0               # RandomTranslation: shift by up to this fraction of the size
    brightness: float = 0.0              # RandomBrightness: up to this fraction of the value range
    contrast: float = 0.0                # RandomContrast: by a factor in [1 - c, 1 + c]
    rand_augment: RandAugmentConfig = field(default_factory=RandAugmentConfig)  # needs 3 channels
    erasing: float = 0.0                 # RandomErasing: the probability an image gets a rectangle erased
    mixup: float = 0.0                   # MixUp alpha; 0 = off (needs one-hot labels)
    cutmix: float = 0.0                  # CutMix factor; 0 = off (needs one-hot labels)


@dataclass
class HardwareConfig:
    precision: Precision = Precision.auto  # auto: measured on your model (a trial), and why is recorded
    precision_trial: bool = True         # auto: time each native precision on your model (cached); false: a table
    strategy: StrategyKind = StrategyKind.auto  # auto: multi_worker with TF_CONFIG, mirrored on several GPUs
    logical_cpus: Optional[int] = None   # split the CPU into N logical devices (rehearse mirrored runs)
    worker_timeout_s: float = 300.0      # multi_worker: how long to wait for every worker to join


@dataclass
class Config:
    name: str = "custom"                 # experiment name (each experiment sets it), in report.json
    dataset: DatasetConfig = field(default_factory=DatasetConfig)    # configs/dataset/
    model: ModelConfig = field(default_factory=ModelConfig)          # configs/model/
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # configs/optimizer/
    trainer: TrainerConfig = field(default_factory=TrainerConfig)    # configs/trainer/
    hardware: HardwareConfig = field(default_factory=HardwareConfig)  # configs/hardware/
    augment: AugmentConfig = field(default_factory=AugmentConfig)    # configs/augment/
    debug: bool = False                  # true: full Python tracebacks
    isolate_jobs: bool = True            # multirun: each job in its own process (safetrain.experiment.sweep)
    dry_run: bool = False                # check config, data (the full scan) and model; train nothing


def register() -> None:
    """Make the schema the base of configs/config.yaml (its defaults list names `base_config`)."""
    ConfigStore.instance().store(name="base_config", node=Config)
