"""Report part 5, the MNIST study: one main configuration and four one-change variants of it.

``mnist_main`` is the reference (LeNet-5-style net, cross-entropy, SGD lr 0.01 momentum 0.5, batch 128,
8 epochs, 50,000/10,000 train/validation split, test set for final numbers). Each variant changes
exactly one thing: the learning rate (0.1, 0.0001), the loss (softmax-then-MSE) or the network.
"""

from __future__ import annotations

from cifarlib import tables
from cifarlib.experiments import register

MAIN = dict(
    dataset="mnist",
    model="mnist_lenet",
    val_size=10_000,  # 60,000 training digits -> 50,000 train / 10,000 validation
    epochs=8,
    batch_size=128,  # images per step -> 390 steps per epoch (the incomplete last batch is dropped)
    optimizer="sgd",
    lr=0.01,
    momentum=0.5,
    loss="cross_entropy",
    eval_every_steps=200,  # also evaluate every 25,600 images (~2 points per epoch) for the examples-seen curves
    train_eval_size=5000,  # "train" metrics on a fixed 5,000-image subset of the training split
)

# Quick profile: 500 training digits (450 after the 50 held out), 200 test digits, one epoch.
QUICK = dict(train_per_class=50, test_per_class=20, val_size=50, epochs=1, eval_every_steps=1,
             train_eval_size=450)

_VARIANTS = {
    "mnist_main": ("LeNet-5-style net, cross-entropy, SGD lr 0.01 momentum 0.5, batch 128, 8 epochs", {}),
    "mnist_lr_0.1": ("mnist_main with learning rate 0.1 (10x larger)", dict(lr=0.1)),
    "mnist_lr_0.0001": ("mnist_main with learning rate 0.0001 (100x smaller)", dict(lr=1e-4)),
    "mnist_mse": ("mnist_main with L2 loss: softmax probabilities vs one-hot targets", dict(loss="mse")),
    "mnist_small": ("mnist_main with the small network (2,202 params instead of 61,706)", dict(model="mnist_small")),
}

for _name, (_description, _changes) in _VARIANTS.items():
    register(_name, _description, part="mnist", quick=dict(QUICK), **{**MAIN, **_changes})

# The study's comparisons: row label -> experiment name (the main run appears in every group).
LR_SWEEP = {"lr 0.1": "mnist_lr_0.1", "lr 0.01": "mnist_main", "lr 0.0001": "mnist_lr_0.0001"}
LOSSES = {"cross-entropy": "mnist_main", "L2 (softmax vs one-hot)": "mnist_mse"}
NETWORKS = {"LeNet-5": "mnist_main", "small": "mnist_small"}

# The settings a reader needs to replicate the main run (the notebook's configuration table).
TABLE_KEYS = ["model", "loss", "optimizer", "lr", "momentum", "batch_size", "epochs", "val_size",
              "eval_every_steps", "train_eval_size", "seed", "device", "precision"]

# What the report calls each network.
NETWORK_NAMES = {"mnist_lenet": "LeNet-5-style", "mnist_small": "small (two narrow convolutions)"}


def reader_config(record) -> dict:
    """A run's configuration as the report's settings table shows it: the network by name, and the
    device and precision the run actually used (the config may say "auto")."""
    cfg = tables.as_run(record)
    cfg["model"] = NETWORK_NAMES.get(cfg["model"], cfg["model"])
    return cfg
