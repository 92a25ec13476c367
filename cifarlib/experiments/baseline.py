"""Report part 2: the assignment's Table-1 network trained as the assignment specifies."""

from cifarlib.experiments import register

# The quick profile (nbval, CI) trains on 100 images per class for one epoch: enough to exercise
# every code path in seconds, not to learn CIFAR-10.
QUICK = dict(train_per_class=100, test_per_class=50, epochs=1, train_eval_size=500)

register(
    "baseline",
    "Table-1 CNN, SGD lr 5e-2 (no momentum), batch 64, early stopping (patience 4), no augmentation",
    part="baseline",
    quick=QUICK,
    model="baseline",
    optimizer="sgd",
    lr=5e-2,
    momentum=0.0,
    batch_size=64,
    epochs=10,
    val_fraction=0.1,
    early_stop_patience=4,
    crop_pad=0,
    flip=False,
    precision="auto",
)
