"""Training: one config object per run (``TrainConfig``) and one readable loop (``fit``).

CONTRACT (other modules rely on these names; keep them):

    cfg = TrainConfig(model="baseline", epochs=10, lr=5e-2, ...)   # unknown keys -> CifarlibError listing known keys
    cfg = TrainConfig.from_dict({...}); cfg.to_dict(); cfg.replace(**changes)
    run = fit(model, splits, cfg)                                   # -> Run
    run.status in {"finished", "early_stopped", "diverged", "interrupted"}
    run.history: list[dict] with keys HISTORY_COLUMNS (one row per evaluation point)
    run.metrics: dict (final_* and best_* values, epochs_run, params, wall_s, device)
    evaluate(model, loader_or_imageset, ...) -> (loss, acc)

TODO(engine helper): implement the bodies marked NotImplementedError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from cifarlib.errors import CifarlibError  # noqa: F401

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


@dataclass
class TrainConfig:
    """Everything that determines a training run. Units in the comments. Flows unchanged into the
    papermill ``parameters`` cell, the run record (config.json) and the report tables."""

    name: str = "run"  # label for the run record folder
    model: str = "baseline"  # a name from cifarlib.models.model_names()
    model_kw: dict = field(default_factory=dict)  # keyword arguments for build_model
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
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 0.0  # L2 penalty coefficient (decoupled for adamw)
    scheduler: str = "none"  # "none" | "step" | "cosine" | "onecycle"
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr over this many epochs
    step_epochs: float = 5.0  # "step": multiply lr by step_gamma every this many epochs
    step_gamma: float = 0.1
    label_smoothing: float = 0.0  # cross-entropy target smoothing, 0..1
    loss: str = "cross_entropy"  # "cross_entropy" | "mse" (softmax probabilities vs one-hot targets)
    grad_clip: float | None = None  # max global gradient norm, None = off
    # augmentation (training batches only)
    crop_pad: int = 0  # random crop after padding this many pixels (0 = off)
    flip: bool = False  # random horizontal flip
    cutout: int = 0  # cutout square side in pixels (0 = off)
    # evaluation and stopping
    eval_every_steps: int | None = None  # also evaluate every N optimizer steps (None: once per epoch)
    train_eval_size: int = 5000  # evaluate "train" metrics on this fixed subset of the training split
    early_stop_patience: int | None = None  # stop after this many evaluations without a lower val loss
    restore_best: bool = True  # with early stopping: restore the weights of the best val loss
    tta_flip: bool = False  # evaluate with test-time horizontal-flip averaging
    # execution
    device: str = "auto"  # "auto" (cuda > mps > cpu) | "cpu" | "cuda" | "cuda:N" | "mps"
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" (auto: bf16 on CUDA/CPU-with-bf16, else fp32)
    channels_last: bool = True  # NHWC memory format for convolutions
    compile: bool = False  # torch.compile the model
    seed: int = 0  # seeds model init, split-independent batch order and augmentation

    def __post_init__(self):
        raise NotImplementedError  # validate values (epochs >= 1, lr > 0, known optimizer, ...)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        raise NotImplementedError  # unknown keys -> CifarlibError listing the known ones

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})


@dataclass
class Run:
    config: TrainConfig
    status: str
    history: list[dict]
    metrics: dict
    model: nn.Module | None = None
    wall_s: float = 0.0


def fit(model: nn.Module, splits, cfg: TrainConfig, progress: bool | None = None) -> Run:
    raise NotImplementedError


def evaluate(model: nn.Module, loader, device=None, tta_flip: bool = False) -> tuple[float, float]:
    raise NotImplementedError
