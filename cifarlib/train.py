"""Training: one config object per run (``TrainConfig``) and one readable loop (``fit``).

CONTRACT (other modules rely on these names; keep them):

    cfg = TrainConfig(model="baseline", epochs=10, lr=5e-2, ...)   # bad values -> CifarlibError naming key, value, allowed
    cfg = TrainConfig.from_dict({...}); cfg.to_dict(); cfg.replace(**changes)   # unknown keys -> CifarlibError
    model = build(cfg, splits)                                      # seeded init (cfg.seed), shapes from the data
    build_kwargs(cfg, splits) -> dict                               # what build passes to the model's builder
    run = fit(model, splits, cfg)                                   # -> Run
    run.status in {"finished", "early_stopped", "diverged", "interrupted"}
    run.history: list[dict] with keys HISTORY_COLUMNS (one row per evaluation point)
    run.metrics: dict (final_* and best_* values, epochs_run, params, wall_s, device, status)
    evaluate(model, loader_or_imageset, ...) -> (loss, acc)
    for logits, y in inference(model, batches, device, tta_flip, precision): ...   # eval mode, no grad
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cifarlib import models, paths
from cifarlib.data import CROP_FILLS, Augment, ImageSet, Loader, Splits
from cifarlib.errors import CifarlibError, first_line

# One row of the history per evaluation point.
HISTORY_COLUMNS = [
    "epoch",  # fractional epochs completed at this point (e.g. 0.5, 1.0)
    "step",  # optimizer steps so far
    "examples_seen",  # training images consumed so far
    "lr",  # learning rate at this point
    "wall_s",  # seconds since fit() started (training + evaluation)
    "running_train_loss", "running_train_acc",  # mean over the batches since the last point
    "train_loss", "train_acc",  # proper evaluation on a fixed training subset (see TrainConfig.train_eval_size)
    "val_loss", "val_acc", "test_loss", "test_acc",
]

DATASETS = ("cifar10", "mnist", "synthetic")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
LOSSES = ("cross_entropy", "mse")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EVAL_AT = ("epochs", "end")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOOKAHEAD_EVERY = 5  # steps between lookahead averages (TrainConfig.lookahead)
LOOKAHEAD_DECAY = 0.95 ** LOOKAHEAD_EVERY  # the slow copy's share at the end of the run
CHECK_EVERY = 25  # steps between reads of the running loss (divergence check, progress bar): each read syncs a GPU


@dataclass
class TrainConfig:
    """Everything that determines a training run. Units in the comments. Saved as the run record's
    config.json (and hashed into its folder name); the report's settings tables show it."""

    name: str = "run"  # label for the run record folder (letters, digits, . _ -)
    model: str = "baseline"  # a name from cifarlib.models.model_names()
    model_kw: dict = field(default_factory=dict)  # keyword arguments for build_model (shapes come from the data)
    dataset: str = "cifar10"  # "cifar10" | "mnist" | "synthetic"
    # data selection
    val_fraction: float = 0.1  # fraction of the training set held out for validation
    val_size: int | None = None  # absolute validation size (images); overrides val_fraction (MNIST: 10000)
    split_seed: int = 0  # seeds the train/validation split (kept apart from `seed` so seeds share one split)
    train_per_class: int | None = None  # keep at most this many training images per class (quick profiles)
    test_per_class: int | None = None  # likewise for the test set
    # optimisation
    epochs: int = 10  # passes over the training split (upper bound when early stopping)
    batch_size: int = 64  # images per optimizer step
    optimizer: str = "sgd"  # "sgd" | "adam" | "adamw"
    lr: float = 5e-2  # peak learning rate (per step, not scaled by batch size)
    momentum: float = 0.0  # SGD momentum (Adam: beta1 stays 0.9)
    nesterov: bool = False  # SGD Nesterov momentum (needs momentum > 0)
    weight_decay: float = 0.0  # L2 penalty coefficient (decoupled for adamw)
    norm_lr_scale: float = 1.0  # lr multiplier for normalization-layer parameters (BN scale and shift); their
    #                             weight decay is divided by it, so the decay per step stays lr * weight_decay
    scheduler: str = "none"  # "none" | "step" | "cosine" | "onecycle" (all per optimizer step)
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr over this many epochs (onecycle: 0 means 30% of the run)
    step_epochs: float = 5.0  # "step": multiply lr by step_gamma every this many epochs
    step_gamma: float = 0.1  # "step": factor per step, 0..1
    label_smoothing: float = 0.0  # target smoothing, 0..1 (cross-entropy, and the one-hot targets of mse)
    loss: str = "cross_entropy"  # "cross_entropy" | "mse" (softmax probabilities vs one-hot targets)
    grad_clip: float | None = None  # max global gradient norm, None = off
    lookahead: bool = False  # every LOOKAHEAD_EVERY steps average the weights into a slow copy and restart from
    #                          it; the slow copy's memory grows over the run and it is the final model (see fit)
    #                          (not with early_stop_patience, which would stop between two averages)
    # augmentation (training batches only)
    crop_pad: int = 0  # random crop after padding this many pixels (0 = off)
    crop_fill: str = "zeros"  # the crop's padding: "zeros" | "reflect" (mirrored edge pixels)
    flip: bool = False  # random horizontal flip
    flip_alternate: bool = False  # with flip: mirror each image in every other epoch instead of at random
    cutout: int = 0  # cutout square side in pixels (0 = off)
    # evaluation and stopping
    eval_every_steps: int | None = None  # also evaluate every N optimizer steps (None: once per epoch)
    eval_at: str = "epochs"  # "epochs": evaluate after every epoch (the curves); "end": once, after the last step
    #                          (a run whose curves nobody plots: same training, fewer evaluations)
    train_eval_size: int = 5000  # evaluate "train" metrics on this fixed subset of the training split (0 = skip)
    eval_batch_size: int = 500  # images per evaluation batch (no gradients kept, so larger than batch_size)
    early_stop_patience: int | None = None  # stop after this many evaluations without a lower val loss
    restore_best: bool = True  # with early stopping: end with the weights of the best val loss
    tta_flip: bool = False  # evaluate with test-time horizontal-flip averaging (of the logits)
    # execution
    device: str = "auto"  # "auto" (cuda > mps > cpu) | "cpu" | "cuda" | "cuda:N" | "mps"
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" (auto: see resolve_precision)
    channels_last: bool = True  # NHWC memory format for convolutions
    compile: bool = False  # torch.compile the model
    seed: int = 0  # seeds model init, batch order, augmentation and dropout (not the split)

    def __post_init__(self):
        _check_types(self)
        _check_values(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise CifarlibError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})


# ---- validation ---------------------------------------------------------------------------------

_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict, "None": type(None)}


def _check_types(cfg: TrainConfig) -> None:
    """Check each value against its annotation (``int | None`` etc.); ints are accepted for floats
    and stored as floats, so that lr=1 and lr=1.0 are the same config (and the same run hash)."""
    for f in dataclasses.fields(cfg):
        value, allowed = getattr(cfg, f.name), [t.strip() for t in str(f.type).split("|")]
        is_bool = isinstance(value, bool)
        if not any(isinstance(value, _TYPES[t]) and not (is_bool and t in ("int", "float")) for t in allowed):
            raise CifarlibError(f"config {f.name}={value!r} has the wrong type; allowed: {' or '.join(allowed)}")
        if "float" in allowed and isinstance(value, int) and not is_bool:
            setattr(cfg, f.name, float(value))


def _choices(options):
    return lambda v: v in options, "one of " + ", ".join(repr(o) for o in options)


# key -> (test, allowed values in words). None values pass for the optional keys.
_RULES = {
    "name": (lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v) is not None,
             "letters, digits, '.', '_', '-' (it names a folder)"),
    "model": (lambda v: v in models.model_names(), "one of " + ", ".join(map(repr, models.model_names()))),
    "dataset": _choices(DATASETS),
    "val_fraction": (lambda v: 0 <= v < 1, "a number with 0 <= val_fraction < 1"),
    "val_size": (lambda v: v >= 1, "an integer >= 1, or None"),
    "train_per_class": (lambda v: v >= 1, "an integer >= 1, or None"),
    "test_per_class": (lambda v: v >= 1, "an integer >= 1, or None"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "optimizer": _choices(OPTIMIZERS),
    "lr": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number with 0 <= momentum < 1"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "norm_lr_scale": (lambda v: 0 < v < math.inf, "a finite number > 0 (1 = same lr as the other weights)"),
    "scheduler": _choices(SCHEDULERS),
    "warmup_epochs": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "step_epochs": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "step_gamma": (lambda v: 0 < v <= 1, "a number with 0 < step_gamma <= 1"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number with 0 <= label_smoothing < 1"),
    "loss": _choices(LOSSES),
    "grad_clip": (lambda v: 0 < v < math.inf, "a finite number > 0, or None"),
    "crop_pad": (lambda v: v >= 0, "an integer >= 0"),
    "crop_fill": _choices(CROP_FILLS),
    "cutout": (lambda v: v >= 0, "an integer >= 0"),
    "eval_every_steps": (lambda v: v >= 1, "an integer >= 1, or None"),
    "eval_at": _choices(EVAL_AT),
    "train_eval_size": (lambda v: v >= 0, "an integer >= 0"),
    "eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "early_stop_patience": (lambda v: v >= 1, "an integer >= 1, or None"),
    "device": (lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
               "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    "precision": _choices(PRECISIONS),
    "seed": (lambda v: 0 <= v <= 2**63 - 1, "an integer from 0 to 2**63 - 1"),
    "split_seed": (lambda v: 0 <= v <= 2**63 - 1, "an integer from 0 to 2**63 - 1"),
}


def _check_values(cfg: TrainConfig) -> None:
    for key, (ok, allowed) in _RULES.items():
        value = getattr(cfg, key)
        if value is not None and not ok(value):
            raise CifarlibError(f"config {key}={value!r} is not allowed; use {allowed}")
    if cfg.flip_alternate and not cfg.flip:
        raise CifarlibError("config flip_alternate=True needs flip=True; set both, or neither")
    if cfg.lookahead and cfg.early_stop_patience:
        raise CifarlibError("config lookahead=True ends on its slow average, which early stopping would skip; "
                            "set early_stop_patience=None or lookahead=False")
    if cfg.eval_at == "end" and (cfg.eval_every_steps or cfg.early_stop_patience):
        raise CifarlibError("config eval_at='end' evaluates once, after the last step, so it cannot evaluate every "
                            "few steps or stop early; set eval_at='epochs', or eval_every_steps=None and "
                            "early_stop_patience=None")
    if cfg.nesterov and cfg.momentum == 0:
        raise CifarlibError("config nesterov=True needs momentum > 0; set momentum (e.g. 0.9) or nesterov=False")
    if cfg.early_stop_patience and cfg.val_fraction == 0 and cfg.val_size is None:
        raise CifarlibError("config early_stop_patience needs a validation split; set val_fraction > 0 or val_size")


# ---- device, precision, model --------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; an explicit device that is not there is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CifarlibError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CifarlibError(f"device {name!r} requested but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CifarlibError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPU(s)); use 'cuda:0'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CifarlibError(f"device {name!r} requested but MPS is not available; use device='auto' or 'cpu'")
    return device


def _cpu_has_native_bf16() -> bool:
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``fit`` trains in: "fp32", "bf16" or "fp16" (autocast; fp16 adds a GradScaler).

    auto on CUDA: bf16 where the GPU has it, else fp16. auto on MPS: fp32.
    auto on CPU: bf16 autocast when the CPU has native bf16 instructions (AVX512-BF16 or AMX), else
    fp32. Measured early in the project on the 2-core AMD EPYC (AVX512-BF16) development machine, Table-1
    model, batch 64, SGD, 40 timed steps after 5 warm-up steps, two repeats (noisy shared machine):
    fp32 NCHW 514/1151 img/s, fp32 channels_last 1929/1502, bf16 NCHW 2222/1852,
    bf16 channels_last 2652/2887 -> bf16 + channels_last is the fastest, about 1.5-2x fp32.
    Without native bf16 the CPU emulates it, which is slower than fp32, hence the check.
    On a CPU shared with other busy processes (load ~8 on the 2 cores) two OpenMP threads collapse
    (fp32 221, bf16 channels_last 82 img/s) while one thread keeps the order (fp32 368, bf16
    channels_last 926): that is oversubscription (use torch.set_num_threads(1)), not precision.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and _cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CifarlibError("precision 'bf16' is not supported by this GPU; use precision='fp16' or 'auto'")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def build_kwargs(cfg: TrainConfig, splits: Splits | None = None) -> dict:
    """The arguments :func:`build` passes to the model's builder: from ``splits`` the shapes
    (in_channels / num_classes / image_size, to builders that take them or **kwargs) and the input
    statistics (input_mean / input_std, only to builders that name them: the transfer model
    un-normalizes its input with them); then ``cfg.model_kw``, which wins. A run record keeps them, so
    that its model can be rebuilt without the data."""
    kw = {}
    if splits is not None:
        _, channels, height, _ = splits.train.images.shape
        shapes = {"in_channels": channels, "num_classes": len(splits.classes), "image_size": height}
        stats = {"input_mean": tuple(splits.mean), "input_std": tuple(splits.std)}
        named, takes_any = models.builder_arguments(cfg.model)
        kw = {**{k: v for k, v in shapes.items() if takes_any or k in named},
              **{k: v for k, v in stats.items() if k in named}}
    return {**kw, **cfg.model_kw}


def build(cfg: TrainConfig, splits: Splits | None = None) -> nn.Module:
    """The model of ``cfg`` built with :func:`build_kwargs`, initialised from ``cfg.seed`` (the global
    RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return models.build_model(cfg.model, **build_kwargs(cfg, splits))


# ---- optimisation pieces -------------------------------------------------------------------------

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters in optimizer groups, each with an ``lr_scale`` (multiplied into the
    scheduled lr at every step): normalization-layer parameters get ``cfg.norm_lr_scale`` and weight
    decay ``cfg.weight_decay / cfg.norm_lr_scale`` (the same decay per step), all others scale 1."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    norm = [p for p in trainable if id(p) in norm_ids]
    other = [p for p in trainable if id(p) not in norm_ids]
    if cfg.norm_lr_scale == 1 or not norm:
        return [{"params": trainable, "lr_scale": 1.0, "weight_decay": cfg.weight_decay}]
    return [{"params": other, "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
            {"params": norm, "lr_scale": cfg.norm_lr_scale, "weight_decay": cfg.weight_decay / cfg.norm_lr_scale}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, cfg) if g["params"]]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    opt = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return opt(groups, lr=cfg.lr)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then the schedule.

    step: lr * step_gamma ** (epochs done // step_epochs); cosine: half a cosine from lr to 0 over the
    steps after warm-up; onecycle: linear up to lr (over warmup_epochs, or 30% of the run when 0,
    as torch's OneCycleLR), then linear down to 0.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.scheduler == "onecycle" and warmup == 0:
        warmup = 0.3 * total
    if step < warmup:
        return cfg.lr * min(1.0, (step + 1) / warmup)  # warm-up need not be a whole number of steps
    after = (step - warmup) / max(total - warmup, 1)  # 0 -> 1 over the steps after warm-up
    if cfg.scheduler == "step":
        return cfg.lr * cfg.step_gamma ** math.floor(step / (cfg.step_epochs * steps_per_epoch))
    if cfg.scheduler == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * after))
    if cfg.scheduler == "onecycle":
        return cfg.lr * (1 - after)
    return cfg.lr


def sample_losses(logits: torch.Tensor, y: torch.Tensor, kind: str = "cross_entropy",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-image loss, in fp32. ``cross_entropy``: softmax cross-entropy of the logits.
    ``mse``: mean over classes of (softmax probability - one-hot target)^2, so that the batch mean
    equals ``F.mse_loss(probs, one_hot)``. Label smoothing applies to both kinds of target."""
    logits = logits.float()
    if kind == "cross_entropy":
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    classes = logits.shape[1]
    target = F.one_hot(y, classes).float() * (1 - label_smoothing) + label_smoothing / classes
    return (logits.softmax(dim=1) - target).pow(2).mean(dim=1)


def train_step(net, optimizer, scaler, x, y, cfg: TrainConfig, precision: str):
    """One optimizer step. Returns (loss, correct) as device tensors (no GPU sync here)."""
    with autocast(x.device, precision):
        logits = net(x)
    loss = sample_losses(logits, y, cfg.loss, cfg.label_smoothing).mean()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.argmax(dim=1) == y).sum()


# ---- evaluation ----------------------------------------------------------------------------------

def evaluate(model: nn.Module, loader, device=None, tta_flip: bool = False, loss: str = "cross_entropy",
             precision: str = "fp32", mean=None, std=None, batch_size: int = 500) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` over ``loader`` — any iterable of (x, y) batches — or over an
    ``ImageSet`` (then ``mean``/``std`` normalize it). Runs under ``torch.inference_mode()`` in eval mode
    (the model's mode is restored afterwards). The loss is ``loss`` without label smoothing;
    ``tta_flip`` averages the logits of each image and its horizontal mirror. Empty data: (nan, nan)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(loader, ImageSet):
        if mean is None or std is None:
            raise CifarlibError("evaluate() of an ImageSet needs mean= and std= (e.g. splits.mean, splits.std)")
        loader = Loader(loader, batch_size=batch_size, mean=mean, std=std, device=device)
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    loss_sum = torch.zeros((), dtype=acc_dtype, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    with contextlib.closing(inference(model, loader, device, tta_flip, precision)) as batches:
        for logits, y in batches:
            with torch.inference_mode():
                loss_sum += sample_losses(logits, y, loss).sum()
                correct += (logits.argmax(dim=1) == y).sum()
            n += len(y)
    if n == 0:
        return math.nan, math.nan
    return loss_sum.item() / n, correct.item() / n


def inference(model: nn.Module, batches, device, tta_flip: bool = False, precision: str = "fp32"):
    """Yield (float32 logits, labels) on ``device`` for each (x, y) of ``batches``: the one forward pass
    of evaluation and prediction: eval mode (restored when the generator ends: close it, e.g. with
    ``contextlib.closing``, if you stop early), and per batch ``torch.inference_mode`` and autocast at
    ``precision``; ``tta_flip`` averages the logits of each image and its horizontal mirror."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            with torch.inference_mode(), autocast(device, precision):  # not held while the caller runs
                x, y = x.to(device), y.to(device)
                logits = model(x).float()
                if tta_flip:
                    logits = (logits + model(x.flip(-1)).float()) / 2
            yield logits, y
    finally:
        model.train(was_training)


# ---- the loop ------------------------------------------------------------------------------------

@dataclass
class Run:
    """What ``fit`` returns: the status, one history row per evaluation point, the summary metrics
    and the trained model (on the training device)."""

    config: TrainConfig
    status: str
    history: list[dict]
    metrics: dict
    model: nn.Module | None = None
    wall_s: float = 0.0


def train_eval_subset(train: ImageSet, size: int, seed: int) -> ImageSet:
    """The fixed training subset that "train" metrics are measured on: the first ``size`` images of a
    permutation of the training split seeded with ``seed`` (fit passes cfg.split_seed, so every model
    seed is measured on the same images)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size]
    return ImageSet(train.images[order], train.labels[order])


def _loaders(splits: Splits, cfg: TrainConfig, device: torch.device):
    common = dict(mean=splits.mean, std=splits.std, device=device, channels_last=cfg.channels_last)
    augment = Augment(crop_pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout, crop_fill=cfg.crop_fill,
                      flip_alternate=cfg.flip_alternate)
    # An incomplete last batch is dropped (each epoch reshuffles, so every image is still used): its gradient
    # is noisier at the same lr. Measured on the Table-1 baseline (SGD lr 0.05, no momentum) from its
    # epoch-5 weights (val acc 64.1%): one step on 8 images (45,000 % 64) left 50-62% val accuracy, one
    # step on 64 images 70-72% (4 draws each). A batch of one image would also break batch norm.
    n, b = len(splits.train), cfg.batch_size
    drop_last = n > b and n % b != 0
    train = Loader(splits.train, cfg.batch_size, shuffle=True, augment=augment, seed=cfg.seed, drop_last=drop_last,
                   **common)
    evals = {"train": train_eval_subset(splits.train, cfg.train_eval_size, cfg.split_seed),
             "val": splits.val, "test": splits.test}
    return train, {k: Loader(v, cfg.eval_batch_size, **common) for k, v in evals.items()}


def _evaluate_splits(net, loaders: dict, cfg: TrainConfig, precision: str) -> dict:
    """{"train_loss": ..., "train_acc": ..., "val_loss": ..., ...} for the fixed train subset, val and test."""
    out = {}
    for split, loader in loaders.items():
        out[f"{split}_loss"], out[f"{split}_acc"] = evaluate(net, loader, loader.device, cfg.tta_flip, cfg.loss,
                                                             precision)
    return out


class Lookahead:
    """A slow copy of every floating-point weight and buffer (BN statistics included). ``pull(step,
    total)`` blends it with the current weights, slow = d * slow + (1 - d) * fast, and copies the result
    back, with d = LOOKAHEAD_DECAY * (step / total) ** 3: close to 0 early (training runs as without it),
    rising to LOOKAHEAD_DECAY at the end, where it averages the last steps' weights."""

    def __init__(self, model: nn.Module):
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.fast]

    @torch.no_grad()
    def pull(self, step: int, total: int) -> None:
        decay = LOOKAHEAD_DECAY * (step / total) ** 3
        for slow, fast in zip(self.slow, self.fast):
            slow.lerp_(fast, 1 - decay)
            fast.copy_(slow)


def _batches(loader, epochs: int):
    """All training batches of the run as one stream, so that the loop below has a single ``break``."""
    for _ in range(epochs):
        yield from loader


def _summary(history: list[dict], best: dict | None, restored: bool) -> dict:
    """final_* (the returned weights) and best_* (the evaluation point with the lowest val loss)."""
    nan_row = dict.fromkeys(HISTORY_COLUMNS, math.nan)
    last = history[-1] if history else nan_row
    best = best or last  # no finite validation loss at all: the last point stands in
    final = best if restored else last
    keys = ["train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"]
    return {**{f"final_{k}": final[k] for k in keys}, **{f"best_{k}": best[k] for k in keys},
            "best_epoch": best["epoch"], "best_step": best["step"], "restored_best": restored}


def _check_input(model: nn.Module, loader: Loader, cfg: TrainConfig, precision: str) -> None:
    """One image through ``model`` in eval mode, without gradients (no weight, statistic or random
    state changes), so that a model that cannot take these images fails at once in one line."""
    x = loader.normalize(loader.images[:1])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(loader.device, precision):
            model(x)
    except RuntimeError as err:
        if isinstance(err, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
            raise
        _, c, h, w = x.shape
        raise CifarlibError(f"model {cfg.model!r} cannot take {c}-channel {h}x{w} images ({first_line(err)}); give "
                            "it images of the size and channels it is built for") from None
    finally:
        model.train(was_training)


# ---- threads on a shared CPU ---------------------------------------------------------------------

LOAD_SAMPLE_S = 0.25  # how long fit watches the CPU before it chooses its thread count


def _usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask: taskset, containers, SLURM)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) CPU time so far of the CPUs ``cpus``, from /proc/stat; None where there is none."""
    busy = total = 0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    fields = [int(v) for v in rest.split()[:8]]
                    busy += sum(fields) - fields[3] - fields[4]  # all but idle and iowait
                    total += sum(fields)
    except (OSError, ValueError):
        return None
    return (busy, total) if total else None


def busy_elsewhere(window: float = LOAD_SAMPLE_S) -> float | None:
    """How many of this process's CPUs other processes keep busy, measured over ``window`` seconds (this
    process's own CPU time taken out); None where the system does not say (no /proc/stat)."""
    cpus = _usable_cpus()
    first, own, wall = _cpu_jiffies(cpus), time.process_time(), time.perf_counter()
    if first is None:
        return None
    time.sleep(window)
    second = _cpu_jiffies(cpus)
    if second is None or second[1] == first[1]:
        return None
    busy = (second[0] - first[0]) / (second[1] - first[1]) * len(cpus)
    ours = (time.process_time() - own) / max(time.perf_counter() - wall, 1e-9)
    return max(0.0, busy - ours)


def threads_for_load(current: int) -> int:
    """The CPU threads a run should use now: ``current`` (torch's setting), fewer when other processes
    keep cores busy, one per core they leave free (at least one). On 2 cores beside another 2-thread
    job, OpenMP's threads wait on each other and a 2-thread run falls to 12-19 % of its idle speed,
    while one thread keeps 79-87 % of its own (``python -m cifarlib bench --load``)."""
    if current <= 1:
        return current
    others = busy_elsewhere()
    if others is None:
        return current
    return max(1, min(current, round(len(_usable_cpus()) - others)))


@contextlib.contextmanager
def _threads_on_shared_cpu(device: torch.device):
    """Train with $CIFARLIB_THREADS threads when it is set; else, on the CPU and unless $OMP_NUM_THREADS
    fixes the count, with :func:`threads_for_load`. Torch's setting is restored afterwards."""
    before = torch.get_num_threads()
    fixed = os.environ.get(paths.ENV_THREADS, "").strip()
    if fixed and not (fixed.isdigit() and int(fixed) >= 1):
        raise CifarlibError(f"${paths.ENV_THREADS}={fixed!r} is not a whole number of at least 1; set it to a thread "
                            "count, or unset it to follow the load")
    if fixed:
        chosen = int(fixed)
    elif device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        chosen = before
    else:
        chosen = threads_for_load(before)
    if chosen != before:
        torch.set_num_threads(chosen)
        if not fixed and paths.progress_enabled():
            print(f"other processes keep the CPU busy: training with {chosen} thread(s) instead of {before} "
                  f"(set ${paths.ENV_THREADS}={before} to keep {before})", file=sys.stderr)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(model: nn.Module, splits: Splits, cfg: TrainConfig, progress: bool | None = None,
        callback=None) -> Run:
    """Train ``model`` as ``cfg`` says (see :func:`_fit`). On the CPU the thread count follows the load
    (:func:`threads_for_load`, once at the start); ``run.metrics["threads"]`` records it."""
    with _threads_on_shared_cpu(resolve_device(cfg.device)):
        return _fit(model, splits, cfg, progress, callback)


def _fit(model: nn.Module, splits: Splits, cfg: TrainConfig, progress: bool | None = None,
         callback=None) -> Run:
    """Train ``model`` on ``splits.train`` as ``cfg`` says; evaluate at each epoch end (and every
    ``cfg.eval_every_steps`` steps), or with ``cfg.eval_at="end"`` once after the last step, on the
    train subset, validation and test sets. Evaluation draws no random numbers and changes no weight,
    so the trained model is the same either way; ``metrics["eval_s"]`` is the time it took.

    Stops early after ``cfg.early_stop_patience`` evaluations without a lower validation loss and
    (``cfg.restore_best``) ends with the best weights. A non-finite running loss stops the run with
    status "diverged"; Ctrl-C stops it with status "interrupted" and the history so far. The loss is
    cross-entropy, or with ``cfg.loss="mse"`` the mean squared error between softmax probabilities
    and one-hot targets. With ``cfg.lookahead`` a slow copy of the weights is taken after the first
    step (so that layers set from the first batch, like Model B's whitening, are in it), blended in
    every LOOKAHEAD_EVERY steps and at the last step, and returned as the model. ``progress``: a tqdm
    bar (None: on unless CIFARLIB_PROGRESS=0). ``callback(history)`` is called after every evaluation
    with the history so far (e.g. :class:`cifarlib.plots.LiveCurves`); if it fails, training goes on
    without it after one warning.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if len(splits.train) == 0:
        raise CifarlibError("the training split is empty; select more images (train_per_class) or a smaller val_size")
    if len(splits.classes) < 2 or len(torch.unique(splits.train.labels)) < 2:
        raise CifarlibError(f"the training split holds {len(torch.unique(splits.train.labels))} class(es) of "
                            f"{len(splits.classes)}; a classifier needs images of at least 2 classes")
    if cfg.early_stop_patience and len(splits.val) == 0:
        raise CifarlibError("early stopping needs validation images; set val_fraction > 0 or early_stop_patience=None")
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    net = torch.compile(model) if cfg.compile else model
    train_loader, eval_loaders = _loaders(splits, cfg, device)
    _check_input(model, train_loader, cfg, precision)
    steps_per_epoch = len(train_loader)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    lookahead = None  # with cfg.lookahead: made after the first step, when data-set layers (whitening) are set
    total_steps = cfg.epochs * steps_per_epoch
    history, status, best, best_state, stale = [], "finished", None, None, 0
    step = seen = 0
    eval_s = 0.0  # seconds spent evaluating (part of wall_s)
    run_loss = torch.zeros((), device=device)
    run_correct = torch.zeros((), dtype=torch.int64, device=device)
    run_n = 0
    show = paths.progress_enabled() if progress is None else progress
    bar = tqdm(total=total_steps, desc=cfg.name, unit="step", disable=not show, leave=False)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)  # dropout and anything else drawing from the global RNG
        net.train()
        try:
            for x, y in _batches(train_loader, cfg.epochs):
                lr = lr_at(cfg, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                loss, correct = train_step(net, optimizer, scaler, x, y, cfg, precision)
                step, seen, run_n = step + 1, seen + len(y), run_n + len(y)
                if cfg.lookahead and lookahead is None:
                    lookahead = Lookahead(model)
                if lookahead and (step % LOOKAHEAD_EVERY == 0 or step == total_steps):
                    lookahead.pull(step, total_steps)
                run_loss += loss * len(y)
                run_correct += correct
                at_eval = step == total_steps if cfg.eval_at == "end" else (
                    step % steps_per_epoch == 0 or (cfg.eval_every_steps and step % cfg.eval_every_steps == 0))
                if step % CHECK_EVERY and not at_eval:
                    continue
                running = (run_loss.item() / run_n, run_correct.item() / run_n)
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{running[0]:.3f}", acc=f"{running[1]:.3f}", refresh=False)
                if not math.isfinite(running[0]):
                    status = "diverged"
                if not at_eval and status == "finished":
                    continue
                eval_start = time.perf_counter()
                scores = _evaluate_splits(net, eval_loaders, cfg, precision)
                eval_s += time.perf_counter() - eval_start
                row = {"epoch": step / steps_per_epoch, "step": step, "examples_seen": seen, "lr": lr,
                       "running_train_loss": running[0], "running_train_acc": running[1], **scores,
                       "wall_s": time.perf_counter() - start}
                history.append({k: row[k] for k in HISTORY_COLUMNS})
                run_loss.zero_()
                run_correct.zero_()
                run_n = 0
                bar.set_postfix(loss=f"{running[0]:.3f}", val_loss=f"{row['val_loss']:.3f}",
                                val_acc=f"{row['val_acc']:.3f}")
                if callback is not None:
                    try:
                        callback(history)
                    except Exception as err:  # noqa: BLE001 - a drawing problem must not cost the run
                        warnings.warn(f"the training callback failed ({first_line(err)}); training goes on "
                                      "without it")
                        callback = None
                if row["val_loss"] < (best["val_loss"] if best else math.inf):
                    best, stale = history[-1], 0
                    if cfg.early_stop_patience and cfg.restore_best:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
                if status == "finished" and cfg.early_stop_patience and stale >= cfg.early_stop_patience:
                    status = "early_stopped"
                if status != "finished":
                    break
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            bar.close()
    restored = best_state is not None and status in ("finished", "early_stopped")
    if restored:
        model.load_state_dict(best_state)
    wall_s = time.perf_counter() - start
    metrics = {"status": status, "epochs_run": round(step / steps_per_epoch, 4), "steps": step,
               "examples_seen": seen, "params": models.count_params(model), "wall_s": wall_s,
               "eval_s": eval_s,
               "threads": torch.get_num_threads(),
               "device": str(device), "precision": precision, **_summary(history, best, restored)}
    return Run(config=cfg, status=status, history=history, metrics=metrics, model=model, wall_s=wall_s)
