"""Report part 4 (assignment Task 3): ResNet18 transfer learning on CIFAR-10.

``transfer_resnet18`` follows the assignment's hint: Adam, learning rate 5e-4, batch 32, at most 5
epochs (early stopping on the validation loss, patience 2, best weights restored), ImageNet weights,
inputs upsampled 8x to 256 x 256. The quick profile is a smoke run of the same code path: random
weights (NOT PRETRAINED), 20 training / 10 test images per class, 64 x 64 inputs, one epoch.
"""

from __future__ import annotations

from cifarlib import experiments, tables
from cifarlib.experiments import register

NAME = "transfer_resnet18"

FULL = dict(
    model="resnet18_transfer",
    model_kw=dict(pretrained=True, resolution=256),  # ImageNet weights; 32 -> 256 pixels per side (x8)
    optimizer="adam",
    lr=5e-4,  # Adam step size (per optimizer step, batch 32)
    batch_size=32,  # images per step
    epochs=5,  # upper bound; early stopping usually ends it sooner
    early_stop_patience=2,  # epochs without a lower validation loss before stopping
    restore_best=True,  # end with the weights of the lowest validation loss
    crop_pad=4,  # random 32x32 crop of the 4-pixel padded image, before upsampling
    flip=True,  # random horizontal flip
    eval_batch_size=100,  # images per evaluation batch: 100 x 64 x 128 x 128 conv1 outputs fit a laptop
)

QUICK = dict(
    model_kw=dict(pretrained=False, resolution=64),  # random weights; 64x64 inputs: 16x fewer pixels than 256x256
    train_per_class=20,  # 200 training images (180 after the validation split)
    test_per_class=10,  # 100 test images
    epochs=1,
)

register(NAME, "ResNet18 (ImageNet weights), layer4 + new fc fine-tuned, Adam 5e-4, batch 32, <= 5 epochs",
         part="transfer", quick=QUICK, **FULL)

# The hyperparameters a reader needs to replicate the run (assignment 3(a)), in table order.
TABLE_KEYS = ["model", "model_kw", "optimizer", "lr", "batch_size", "epochs", "early_stop_patience",
              "restore_best", "crop_pad", "flip", "val_fraction", "weight_decay", "precision", "seed"]


def notebook_config(profile: str = "full", pretrained: bool | None = None, weights_path: str | None = None,
                    resolution: int | None = None, **knobs):
    """:func:`cifarlib.experiments.notebook_config` of ``transfer_resnet18`` (``knobs``: TrainConfig fields),
    plus the notebook's three model knobs, which go into ``model_kw``. The same rule for all of them:
    None keeps the experiment's value for ``profile``, anything else wins in both profiles; a
    ``weights_path`` implies ``pretrained=True`` unless told otherwise."""
    if weights_path is not None and pretrained is None:
        pretrained = True
    cfg = experiments.notebook_config(NAME, profile, **knobs)
    model_kw = {k: v for k, v in dict(pretrained=pretrained, weights_path=weights_path, resolution=resolution).items()
                if v is not None}
    return cfg.replace(model_kw={**cfg.model_kw, **model_kw}) if model_kw else cfg


def load_trained(record, device="cpu"):
    """The trained model of a run record. Built without ImageNet weights (the saved file holds all
    weights, and its ``imagenet_weights`` flag says whether the run started from them), so that
    re-reading a finished run needs neither the internet nor the weights file."""
    return record.load_model(device=device)


def comparison_sentences(record, other, other_label: str, pretrained: bool) -> str:
    """Task 3(d)'s discussion from the two runs' histories: validation loss after the first epoch and
    at the end, the gap between training and validation loss, and the final test accuracy."""
    import pandas as pd

    def losses(rec):
        h = pd.DataFrame(rec.history)
        h = h[h["epoch"] == h["epoch"].round()]
        return h["val_loss"].iloc[0], rec.metrics["final_val_loss"], rec.metrics["final_train_loss"]

    (first, last, train), (o_first, o_last, o_train) = losses(record), losses(other)
    acc, o_acc = tables.accuracy(record), tables.accuracy(other)
    text = (f"After its first epoch the transfer model's validation loss is {first:.3f}, against {o_first:.3f} for "
            f"{other_label}; at the end it is {last:.3f} against {o_last:.3f}. The transfer model's training loss ends "
            f"{abs(last - train):.3f} {'below' if train < last else 'above'} its validation loss, {other_label}'s "
            f"{abs(o_last - o_train):.3f} {'below' if o_train < o_last else 'above'}. On the test set the transfer model "
            f"reaches {acc:.1f} % and {other_label} {o_acc:.1f} %.")
    if not pretrained:
        return text + " Without ImageNet weights this run says nothing about transfer learning."
    faster = first < o_first
    return text + (" Starting from features that already separate natural images, the transfer model is ahead from "
                   "the first epoch." if faster else " The pretrained features do not give the transfer model a head "
                   "start here.") + (f" It is a far larger network ({record.metrics.get('params', 0):,} parameters "
                   f"against {other.metrics.get('params', 0):,}), and the gap between its training and validation loss "
                   "shows how much of what it fits carries over to unseen images.")
