"""Looking inside a trained model: predictions for a whole split, the confusion matrix, per-class
accuracy, the misclassified images, and the cost of a forward pass (multiply-accumulates).

``predict_run(record)`` rebuilds the test split a run was evaluated on and predicts every image, so
its accuracy must equal the run record's ``final_test_acc`` (a check the notebook prints).
"""

from __future__ import annotations

import contextlib
import math

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from cifarlib.data import ImageSet, Loader
from cifarlib import tables
from cifarlib.errors import CifarlibError


@dataclass
class Predictions:
    images: torch.Tensor  # uint8 (N, C, H, W), as stored (not normalized)
    labels: torch.Tensor  # int64 (N,) true classes
    preds: torch.Tensor  # int64 (N,) predicted classes
    probs: torch.Tensor  # float (N, K) softmax probabilities
    classes: list

    @property
    def accuracy(self) -> float:
        return (self.preds == self.labels).float().mean().item() if len(self.labels) else float("nan")


@torch.inference_mode()
def predict(model: nn.Module, images: ImageSet, mean, std, device="cpu", batch_size: int = 500,
            tta_flip: bool = False, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(preds, probs) for every image of ``images``, in order, on the CPU. The model runs in eval mode
    (its mode is restored); ``tta_flip`` averages the logits of each image and its mirror, as fit does."""
    from cifarlib.train import inference

    device = torch.device(device)
    model.to(device)
    batches = Loader(images, batch_size, mean=mean, std=std, device=device)
    with contextlib.closing(inference(model, batches, device, tta_flip, precision)) as outputs:
        logits = [out.cpu() for out, _ in outputs]
    logits = torch.cat(logits) if logits else torch.zeros(0, 0)
    return logits.argmax(dim=1), logits.softmax(dim=1)


def predict_run(record, data=None, data_root=None, split: str = "test", device="cpu",
                precision: str | None = None) -> Predictions:
    """Predictions of a run record's saved model on its ``split`` ("test", "val" or "train"), rebuilt
    from the record's config exactly as training selected it. ``precision``: default the run's own."""
    from cifarlib.runs import prepare_splits

    if split not in ("train", "val", "test"):
        raise CifarlibError(f"split must be 'train', 'val' or 'test', got {split!r}")
    cfg = record.config
    splits = prepare_splits(cfg, data, data_root)
    images = getattr(splits, split)
    precision = precision or record.metrics.get("precision", "fp32")
    preds, probs = predict(record.load_model(), images, splits.mean, splits.std, device=device,
                           batch_size=cfg.eval_batch_size, tta_flip=cfg.tta_flip, precision=precision)
    return Predictions(images.images, images.labels, preds, probs, list(splits.classes))


def confusion_matrix(labels, preds, num_classes: int) -> torch.Tensor:
    """int64 (K, K): row = true class, column = predicted class, cell = number of images."""
    labels, preds = torch.as_tensor(labels).long(), torch.as_tensor(preds).long()
    if labels.shape != preds.shape:
        raise CifarlibError(f"labels and preds differ in shape ({tuple(labels.shape)} vs {tuple(preds.shape)})")
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_table(matrix, classes) -> pd.DataFrame:
    """One row per class: test images, accuracy (%), and the class it is most often mistaken for."""
    m = torch.as_tensor(matrix).long()
    rows = []
    for k, name in enumerate(classes):
        total, wrong = int(m[k].sum()), m[k].clone()
        wrong[k] = -1
        j = int(wrong.argmax())
        rows.append({"class": name, "images": total, "accuracy (%)": 100.0 * int(m[k, k]) / max(total, 1),
                     "most confused with": f"{classes[j]} ({int(m[k, j])})" if int(m[k, j]) > 0 else "-"})
    return pd.DataFrame(rows)


def top_confusions(matrix, classes, k: int = 5) -> pd.DataFrame:
    """The ``k`` most frequent (true -> predicted) mistakes: images, and their share of the true class (%)."""
    m = torch.as_tensor(matrix).long().clone()
    totals = m.sum(dim=1)
    m.fill_diagonal_(-1)
    order = torch.argsort(m.flatten(), descending=True, stable=True)[:k]
    rows = []
    for flat in order.tolist():
        t, p = divmod(flat, len(classes))
        if int(m[t, p]) <= 0:
            break
        rows.append({"true": classes[t], "predicted": classes[p], "images": int(m[t, p]),
                     "% of true class": 100.0 * int(m[t, p]) / max(int(totals[t]), 1)})
    return pd.DataFrame(rows, columns=["true", "predicted", "images", "% of true class"])


def misclassified(p: Predictions, k: int = 16) -> torch.Tensor:
    """Indices of up to ``k`` wrongly classified images, the most confidently wrong first."""
    wrong = torch.nonzero(p.preds != p.labels).flatten()
    confidence = p.probs[wrong, p.preds[wrong]]
    return wrong[torch.argsort(confidence, descending=True, stable=True)][:k]


def gallery_titles(p: Predictions, indices) -> list[str]:
    """``"said cat 97%\\nis dog"`` per image: the predicted class with its probability, then the true one."""
    return [f"said {p.classes[int(p.preds[i])]} {100 * float(p.probs[i, p.preds[i]]):.0f}%\n"
            f"is {p.classes[int(p.labels[i])]}" for i in indices]


def plot_misclassified(p: Predictions, k: int = 10, ncols: int = 5, title: str | None = None):
    """A grid of the ``k`` most confidently misclassified images, titled with predicted and true class."""
    from cifarlib.plots import plot_image_grid

    idx = misclassified(p, k)
    title = title or f"The {len(idx)} most confidently misclassified test images (of {int((p.preds != p.labels).sum()):,})"
    return plot_image_grid(p.images[idx], gallery_titles(p, idx), ncols=ncols, title=title, size=1.2)


def forward_macs(model: nn.Module, input_size=(1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass per image in conv and dense layers (the bulk of the
    cost; BN, activations and pooling are ignored). Counted from the actual output shapes."""
    total = 0

    def hook(m, _inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return total // input_size[0]


def _threads(records) -> str:
    """The CPU thread counts the runs had, e.g. "2" or "1, 2" (runs of one model may differ)."""
    counts = sorted({str(r.env.get("threads", "?")) for r in records})
    return ", ".join(counts)


def cost_table(groups) -> pd.DataFrame:
    """One row per model (``groups``: label -> run records of its seeds): parameters, forward
    multiply-accumulates per 32x32 image, the recorded training time per run and per epoch (wall
    time less the evaluations, so runs that evaluate after every epoch and runs that evaluate once
    compare alike), the time of one evaluation of training subset, validation and test set, and the
    device it ran on."""
    rows = []
    for label, records in groups.items():
        rec = records[0]
        model = rec.load_model()
        ms = [r.metrics for r in records]
        trains = [m["wall_s"] - m.get("eval_s", 0.0) for m in ms]
        evals = [m["eval_s"] / len(r.history) for m, r in zip(ms, records) if "eval_s" in m and len(r.history)]
        rows.append({"model": label, "parameters": sum(p.numel() for p in model.parameters()),
                     "MMACs / image": forward_macs(model) / 1e6, "runs": len(records),
                     "training per run (min)": sum(trains) / len(trains) / 60,
                     "s per epoch": sum(t / m["epochs_run"] for t, m in zip(trains, ms)) / len(ms),
                     "s per evaluation": sum(evals) / len(evals) if evals else math.nan,
                     "trained on": tables.hardware(rec.metrics["device"], rec.metrics["precision"], _threads(records))})
    return pd.DataFrame(rows).dropna(axis=1, how="all")  # records from before eval_s was kept: no such column


def mistakes_sentence(top: pd.DataFrame, p: Predictions, matrix) -> str:
    """A short paragraph on the mistakes, every number from ``top`` (:func:`top_confusions`), the
    predictions ``p`` and the confusion ``matrix``."""
    m = torch.as_tensor(matrix).long()
    errors = int(m.sum() - m.diag().sum())
    if errors == 0 or top.empty:
        return f"The model classifies all {int(m.sum()):,} test images correctly."
    acc = 100.0 * m.diag().float() / m.sum(dim=1).clamp(min=1).float()
    worst, best = int(acc.argmin()), int(acc.argmax())
    first = top.iloc[0]
    pairs = {frozenset((r["true"], r["predicted"])) for _, r in top.iterrows()}
    both_ways = [sorted(pair) for pair in pairs if len(pair) == 2 and
                 ((top["true"] == sorted(pair)[0]) & (top["predicted"] == sorted(pair)[1])).any() and
                 ((top["true"] == sorted(pair)[1]) & (top["predicted"] == sorted(pair)[0])).any()]
    text = (f"Of the {int(m.sum()):,} test images, {errors:,} ({100.0 * errors / int(m.sum()):.1f} %) are misclassified. "
            f"The most frequent mistake is {first['true']} taken for {first['predicted']} ({int(first['images'])} images, "
            f"{first['% of true class']:.1f} % of all {first['true']} images); "
            + (f"the {len(top)} most frequent mistakes make up" if len(top) > 1 else "that mistake makes up") + f" {int(top['images'].sum()):,} of the {errors:,} errors. The weakest class is {p.classes[worst]} "
            f"({acc[worst]:.1f} %), the strongest {p.classes[best]} ({acc[best]:.1f} %).")
    if both_ways:
        text += (" Some pairs are confused in both directions ("
                 + ", ".join(f"{a} and {b}" for a, b in sorted(both_ways))
                 + "): classes that share shape, texture or background at 32×32 pixels.")
    return text
