"""String options, validated in one place (configs and CLI both use these)."""

from __future__ import annotations

from enum import Enum
from typing import Sequence


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def choices(cls) -> list[str]:
        return [member.value for member in cls]


class AddressingStyle(StrEnum):
    AUTO = "auto"
    PATH = "path"  # MinIO / Ceph and most self-hosted stores
    VIRTUAL = "virtual"


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpg"
    TIFF = "tif"


class TiffCompression(StrEnum):
    NONE = "none"
    DEFLATE = "deflate"
    ZSTD = "zstd"
    JPEG = "jpeg"  # lossy: images only, never label masks


class Activation(StrEnum):
    RELU = "relu"
    LEAKY_RELU = "leaky_relu"  # slope 0.1, as in the Res-UNet ensemble paper


class Task(StrEnum):
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"


class PadMode(StrEnum):
    """What a model does with inputs whose size is not a multiple it needs."""

    REPLICATE = "replicate"  # pad by repeating edge pixels, crop the output back
    ZEROS = "zeros"
    STRICT = "strict"  # refuse, naming the multiple


class DepthPreset(StrEnum):
    PAPER = "paper"  # the block counts of the source paper
    TINY = "tiny"  # one block per stage: tests and the CPU demo


class LossName(StrEnum):
    CE = "ce"
    DICE = "dice"
    FOCAL = "focal"
    CE_DICE = "ce_dice"
    CE_FOCAL = "ce_focal"
    WEIGHTED_BCE = "weighted_bce"
    SELF_DISTILLATION = "self_distillation"


class ClassWeighting(StrEnum):
    """Class weights for the loss, from the training split's pixel counts per class (``f_c``: class c's share)."""

    INVERSE_SQRT_FREQUENCY = "inverse_sqrt_frequency"  # w_c = sqrt(median(f) / f_c): rare classes count more, gently
    MEDIAN_FREQUENCY = "median_frequency"  # w_c = median(f) / f_c (median frequency balancing, Eigen & Fergus 2015)


class DatasetLayout(StrEnum):
    AUTO = "auto"
    VOC = "voc"  # JPEGImages/, SegmentationClass/, ImageSets/Segmentation/*.txt
    PAIRED = "paired"  # images/ + masks/ matched by file stem (LumenStone)
    INSTANCE_FOLDERS = "instance_folders"  # <id>/images/<id>.png + <id>/masks/<instance>.png (one mask per object)
    LABELME = "labelme"  # image + <stem>.json with polygon "shapes"
    COCO = "coco"  # COCO polygon JSON (+ images beside it)
    CLASS_FOLDERS = "class_folders"  # one folder of images per class (classification)


class SplitGroup(StrEnum):
    """What splits keep together: each source image, or each scene (an image's name below its source, so
    that the same scene given by several sources, e.g. PPL and XPL photographs, stays in one split)."""

    IMAGE = "image"
    SCENE = "scene"


class SplitStratify(StrEnum):
    """How seeded splits and folds spread images: at random, or stratified by the classes each shows."""

    NONE = "none"  # seeded shuffle, exact counts per split
    CLASSES = "classes"  # iterative stratification on class presence and abundance (``data/splits.py``)


class ChannelMode(StrEnum):
    """How one image of a scene becomes input channels."""

    RGB = "rgb"  # 3 channels, as displayed (grey repeated, alpha dropped, 16-bit scaled)
    GREY = "grey"  # 1 channel: the displayed picture's luminance (a grey file's own values)
    BANDS = "bands"  # every stored sample as a channel (multi-band TIFF), ``bands`` of them

    def count(self, bands: int | None = None) -> int:
        """Input channels an image read this way gives."""
        return {"rgb": 3, "grey": 1}.get(self.value, bands or 0)


class ScoreSplit(StrEnum):
    """What ``minseg score`` scores: every labelled item of the data (a new test set), or one of its splits."""

    ALL = "all"
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class MaskEncoding(StrEnum):
    CODES = "codes"  # pixel values (grey or palette index) are class codes
    COLORS = "colors"  # RGB masks: each class has a colour


class Augmentation(StrEnum):
    NONE = "none"
    DIHEDRAL = "dihedral"  # the Res-UNet paper's flips and rotations (x6)
    SHIFT_ROTATE = "shift_rotate"  # the microplastic paper's 20 % shift / 45 deg rotation, mean fill
    BOTH = "both"


class OptimizerName(StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class ScheduleName(StrEnum):
    COSINE = "cosine"  # per step, from lr to min_lr, after optional linear warm-up
    STEP = "step"  # multiply by gamma every step_epochs (MFAF: 0.6 every 30 epochs)
    CONSTANT = "constant"


class Precision(StrEnum):
    AUTO = "auto"  # bf16 autocast on GPUs that support it, else fp16 with loss scaling; fp32 on CPU
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class FusionMode(StrEnum):
    PV = "pv"  # plurality voting: one vote per member
    WV = "wv"  # weighted voting: member ranked i (0 = best) of n votes with weight n - i
    SOFT = "soft"  # mean of softmax probabilities
    WEIGHTED_SOFT = "weighted_soft"  # probabilities weighted like WV
    LEARNED = "learned"  # probabilities weighted by weights fitted on the validation split


class SelectionRule(StrEnum):
    """How ``evaluate`` / ``select`` choose among the candidate ensembles."""

    BEST = "best"  # the best value of the ranking key
    TPI_BUDGET = "tpi_budget"  # the best among candidates within a time-per-image budget
    # the most members among candidates within one bootstrap standard error of the best (selection.select)
    ONE_SE = "one_se"


class MemberCheckpoint(StrEnum):
    """Which of a member's checkpoints an evaluation scores."""

    BEST = "best"  # the epoch training kept by its checkpoint_metric on validation (the last without validation)
    LAST = "last"  # the final epoch: validation chose nothing yet, so ranking and selection on it see fresh data


class MemberStatus(StrEnum):
    """Outcome of one member's training (one trial: a member, or a member on one CV fold)."""

    DONE = "done"
    FAILED = "failed"


class OutputFormat(StrEnum):
    ZARR = "zarr"  # OME-Zarr (NGFF 0.5): always written, blocks go straight into it
    TIFF = "tiff"  # pyramidal BigTIFF labels/uncertainty, exported from the zarr when the slide is done


class SlideStatus(StrEnum):
    """Outcome of one slide in a segmentation batch."""

    DONE = "done"
    SKIPPED = "skipped"  # complete outputs for the same ensemble already exist
    FAILED = "failed"


class TTA(StrEnum):
    NONE = "none"
    FLIPS = "flips"  # identity, horizontal, vertical flip
    DIHEDRAL = "dihedral"  # the eight flips / 90-degree rotations (square tiles)


class Blend(StrEnum):
    GAUSSIAN = "gaussian"
    PYRAMID = "pyramid"
    UNIFORM = "uniform"


class Uncertainty(StrEnum):
    AUTO = "auto"  # entropy for soft fusion modes, disagreement for voting
    ENTROPY = "entropy"  # entropy of the fused probabilities / log(classes)
    DISAGREEMENT = "disagreement"  # 1 - the winning class's (vote) share


class PreviewFormat(StrEnum):
    PNG = "png"
    JPEG = "jpg"


# -- prospectivity -------------------------------------------------------------


class CensoredValue(StrEnum):
    """What a value reported below its detection limit (``<DL``) becomes."""

    HALF_LIMIT = "half_limit"  # DL / 2: the usual substitution for geochemical surveys
    LIMIT = "limit"
    MISSING = "missing"  # NaN: the sample does not count for that element


class UnknownLimit(StrEnum):
    """A censored value whose detection limit is neither in the value nor in the config."""

    MIN_REPORTED = "min_reported"  # the element's smallest uncensored positive value (reported as assumed)
    ERROR = "error"


class DuplicateSites(StrEnum):
    AVERAGE = "average"  # samples at one site are averaged element by element
    FIRST = "first"
    REJECT = "reject"  # a site sampled twice is an input error


class BadValue(StrEnum):
    """A cell that is not a number, a censored value or a missing marker."""

    MISSING = "missing"  # that element of that sample becomes NaN; reported
    DROP_ROW = "drop_row"  # the whole sample is dropped; reported


class EvidenceKind(StrEnum):
    CONTINUOUS = "continuous"
    CATEGORICAL = "categorical"


class CategoricalEncoding(StrEnum):
    ONEHOT = "onehot"  # one channel per class (the most frequent ``max_classes`` in the study area)
    INDEX = "index"  # one channel: the class id scaled to [0, 1]


class Resampling(StrEnum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    AVERAGE = "average"


class ScheduleSpan(StrEnum):
    """What one learning-rate schedule covers: each stage (restarting) or the whole run."""

    STAGE = "stage"
    RUN = "run"


class InitPart(StrEnum):
    """Which part of a member pretrained weights initialise."""

    ENCODER = "encoder"
    MODEL = "model"


class WeightLayout(StrEnum):
    """How the tensors of a pretrained checkpoint are named (``minseg.models.pretrained``)."""

    AUTO = "auto"
    TORCHVISION = "torchvision"
    TIMM = "timm"
    CONVNEXT_ORIGINAL = "convnext_original"
    MINSEG = "minseg"


class InitNormalization(StrEnum):
    """Which per-channel statistics a member initialised from weights normalises with."""

    AUTO = "auto"  # the weights' family (ImageNet) when the member reads RGB, else the data's
    WEIGHTS = "weights"
    DATA = "data"


class WeightFormat(StrEnum):
    """How a weights file is read, told by its suffix."""

    TORCH = "torch"  # torch.load(weights_only=True): tensors only, no code runs
    SAFETENSORS = "safetensors"

    @classmethod
    def of(cls, uri: str) -> "WeightFormat | None":
        name = uri.lower()
        if name.endswith(".safetensors"):
            return cls.SAFETENSORS
        if name.endswith((".pt", ".pth", ".bin", ".ckpt")):
            return cls.TORCH
        return None


WEIGHT_SUFFIXES = ".pt, .pth, .bin, .ckpt (torch.load, tensors only) or .safetensors"


class AttentionPlacement(StrEnum):
    """Where MFAF applies spatial attention (channel attention always follows the stem)."""

    PAPER = "paper"  # on the backbone's last convolutional features (the prospectivity paper, §3.2)
    STEM = "stem"  # right after channel attention, before the backbone (minseg's earlier reading)


class ScreeningLevel(StrEnum):
    """What element screening compares: the samples themselves, or the interpolated grid cells."""

    SAMPLES = "samples"  # before interpolation (the MFAF paper, §3.1)
    GRID = "grid"


class EcaPlacement(StrEnum):
    """Where the ConvNeXt classifier applies ECA channel attention (the paper's text allows both)."""

    STAGE = "stage"  # once per stage, after its blocks
    BLOCK = "block"  # after every ConvNeXt block


# The metrics ``minseg.metrics.metrics_from_confusion`` reports, by the names ranking and checkpoint keys use: per
# class (``iou:<class>``) and the scalars; higher is better for every one of them.
PER_CLASS_METRICS = ("iou", "precision", "recall", "f1")
SCORE_METRICS = ("miou", "mean_precision", "mean_recall", "mean_f1", "accuracy", "mPA", "mRecall", "F1_paper",
                 "recall_weighted_f1", "recall_weighted_iou", "uncertainty_coefficient")


def metric_key_problem(key: str, class_names: Sequence[str], other_keys: Sequence[str] = ()) -> str | None:
    """Why ``key`` names no metric ``metric_value`` can read from ``metrics_from_confusion`` over ``class_names``
    (or one of ``other_keys``, e.g. a training epoch's ``val_loss``), or None: checked before a job starts, where a
    typo would otherwise fail every member after its first epoch."""
    name, _, cls = key.partition(":")
    if cls:
        if name not in PER_CLASS_METRICS:
            return f"unknown per-class metric {name!r} in {key!r} (use {', '.join(PER_CLASS_METRICS)})"
        if cls not in class_names:
            return f"unknown class {cls!r} in {key!r}; classes: {', '.join(class_names)}"
        return None
    if key not in SCORE_METRICS and key not in other_keys:
        return (f"unknown metric {key!r}; one of {', '.join((*SCORE_METRICS, *other_keys))}, or "
                "<iou|precision|recall|f1>:<class>")
    return None
