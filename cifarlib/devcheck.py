"""``python -m cifarlib gpu-check``: the CUDA path, run end to end and timed (``make gpu-check``).

One command for the first minutes on a GPU machine. It prints the device, then runs and times, each
in its own process so that one failure does not hide the others:

1. the bench (cifarlib's training pipeline against the reference one, on the device);
2. one epoch of Model B (the largest CIFAR-10 model of the report), trained fresh;
3. the quick report (every notebook, the PDF when TeX is there), trained fresh;
4. with ``--full``: the full-profile report (the goal on one current datacenter GPU: 10 minutes).

Fresh means into scratch folders under ``--out``, emptied when the check starts, never the cached
runs. Without ImageNet weights the ResNet18 part trains from scratch (``pretrained=False``), and
says so. Without a data set (none given, none at the default location) the check makes a small
stand-in of the real layout (the same the tests use): the timings then show that the path runs,
not what a real build costs, and ``--full`` is refused. At the end one table: step, wall time,
status; ``timings.json`` in ``--out`` keeps it with the device facts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cifarlib import atomic, paths
from cifarlib.errors import CifarlibError, OneLineParser

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ---- stand-in data sets of the real layouts ----------------------------------------------------------

def write_image_tree(root: Path, classes, per_class: dict, channels: int, size: int, seed: int) -> None:
    """``root/<split>/<class>/<k>.png`` from :func:`cifarlib.data.synthetic` images (learnable classes),
    ``per_class`` images per class and split, e.g. ``{"train": 110, "test": 50}``."""
    from PIL import Image

    from cifarlib import data

    for s, (split, n) in enumerate(per_class.items()):
        ds = data.synthetic(n_train=n * len(classes), n_test=0, num_classes=len(classes), channels=channels,
                            size=size, seed=seed + s)
        for k, (image, label) in enumerate(zip(ds.train.images, ds.train.labels)):
            folder = Path(root) / split / classes[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image.permute(1, 2, 0).numpy()
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / f"{k:05d}.png")


def stand_in_data(folder: Path) -> dict[str, str]:
    """Small data sets of the real layouts in ``folder``, big enough for every quick-profile run: a
    CIFAR-like image-folder tree (110 train and 50 test images a class) and an MNIST-like ``.tar.gz``
    archive (60 and 20). Returns ``{environment variable: root}``."""
    import tarfile

    folder = Path(folder)
    cifar, tree = folder / "cifar10-like", folder / "mnist-like"
    write_image_tree(cifar, CIFAR_CLASSES, {"train": 110, "test": 50}, channels=3, size=32, seed=1)
    write_image_tree(tree, [str(d) for d in range(10)], {"train": 60, "test": 20}, channels=1, size=28, seed=2)
    archive = folder / "mnist-like.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    return {paths.ENV_DATA: str(cifar), paths.ENV_MNIST: str(archive)}


# ---- the check -------------------------------------------------------------------------------------

def device_facts(device: str) -> dict:
    """What the check runs on: torch, CUDA and the GPU's name and memory (or the CPU)."""
    import torch

    facts = {"torch": torch.__version__, "device": device, "cuda": torch.version.cuda or "–"}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpus=torch.cuda.device_count(),
                     memory_gib=round(props.total_memory / 2 ** 30, 1), capability=f"{props.major}.{props.minor}")
    else:
        from cifarlib import sweep

        facts.update(cpus=sweep.cpu_count())
    return facts


def steps(device: str, out: Path, full: bool, pretrained: bool) -> list[tuple[str, list[str]]]:
    """(name, argv after ``python -m cifarlib``) of every step, in order."""
    scratch = out / "runs"
    transfer = [] if pretrained else ["--param", "04_transfer:pretrained=False"]
    plan = [("bench (Table-1 CNN, 200 steps)", ["bench", "--device", device, "--steps", "200"]),
            ("Model B, one epoch", ["run", "improved_b", "--set", "epochs=1", "--set", f"device={device}",
                                    "--runs-dir", str(scratch), "--force", "--executor", "serial"]),
            ("quick report", ["report", "--profile", "quick", "--device", device, "--out", str(out / "quick"),
                              *transfer])]
    if full:
        plan.append(("full report", ["report", "--profile", "full", "--device", device, "--out", str(out / "full"),
                                     *transfer]))
    return plan


def run_steps(plan, env: dict, log_dir: Path) -> list[dict]:
    """Run each step as ``python -m cifarlib ...`` with ``env``; its output goes to the terminal and to
    ``log_dir/<n>.log``. Returns one row per step: name, seconds, exit status."""
    rows = []
    for n, (name, argv) in enumerate(plan, 1):
        print(f"\n=== {n}/{len(plan)} {name}: python -m cifarlib {' '.join(argv)}", flush=True)
        log = log_dir / f"{n}.log"
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "cifarlib", *argv], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="backslashreplace")
            for line in proc.stdout:
                sys.stdout.write(line)
                sink.write(line)
            code = proc.wait()
        seconds = time.perf_counter() - start
        rows.append({"step": name, "seconds": round(seconds, 1), "status": "ok" if code == 0 else f"failed ({code})",
                     "log": str(log)})
        print(f"=== {name}: {seconds:.1f} s, {rows[-1]['status']}", flush=True)
    return rows


def summary(rows: list[dict], facts: dict, data_note: str) -> str:
    width = max(len(r["step"]) for r in rows)
    lines = [f"device: {facts.get('gpu', facts['device'])}, torch {facts['torch']}, CUDA {facts['cuda']}",
             f"data: {data_note}", "", f"{'step':<{width}}  {'wall time':>10}  status"]
    lines += [f"{r['step']:<{width}}  {r['seconds']:>8.1f} s  {r['status']}" for r in rows]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m cifarlib gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default); cpu runs the same steps on the CPU, to try the check itself")
    p.add_argument("--full", action="store_true", help="also build the full-profile report and time it")
    p.add_argument("--data-root", help=f"CIFAR-10 root (default ${paths.ENV_DATA}; stand-in data when unset)")
    p.add_argument("--mnist-root", help=f"MNIST root (default ${paths.ENV_MNIST}; stand-in data when unset)")
    p.add_argument("--out", default="report/gpu-check", help="scratch runs, reports, logs and timings.json "
                   "(default report/gpu-check)")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CifarlibError(f"no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU; "
                                "run the check on a machine with an NVIDIA GPU and a CUDA build of torch, or try the "
                                "check itself with --device cpu")
    given = {paths.ENV_DATA: args.data_root or os.environ.get(paths.ENV_DATA),
             paths.ENV_MNIST: args.mnist_root or os.environ.get(paths.ENV_MNIST)}
    missing = [env for env, root in given.items() if not root and not _downloaded(env)]
    if missing and args.full:
        raise CifarlibError(f"--full needs the real data sets, and {' and '.join(missing)} is not set (nor is the "
                            "data at its default location); pass --data-root and --mnist-root, or leave out --full")
    out = atomic.writable_dir(Path(args.out).resolve(), what="the check's results to",
                              remedy="pass --out with a writable folder")
    for scratch in ("runs", "figures", "quick", "full", "logs"):  # every timing from a fresh start
        shutil.rmtree(out / scratch, ignore_errors=True)
    env = dict(os.environ, CIFARLIB_RUNS=str(out / "runs"), CIFARLIB_FIGURES=str(out / "figures"), PYTHONUNBUFFERED="1")
    env.update({k: str(Path(v).resolve()) for k, v in given.items() if v})
    if missing:
        made = stand_in_data(out / "stand-in-data")
        env.update({k: made[k] for k in missing})
        data_note = (f"stand-in data for {' and '.join(missing)} (timings show the path runs, not what a real "
                     "build costs)")
    else:
        data_note = ", ".join(f"{k}={env.get(k, 'default location')}" for k in given)
    pretrained = _weights_at_hand()
    facts = device_facts(args.device)
    print(f"gpu-check on {facts.get('gpu', args.device)}; {data_note}; "
          f"ResNet18 {'from ImageNet weights' if pretrained else 'trained from scratch (no ImageNet weights at hand)'}")
    log_dir = atomic.writable_dir(out / "logs", what="logs to", remedy="pass --out with a writable folder")
    rows = run_steps(steps(args.device, out, args.full, pretrained), env, log_dir)
    text = summary(rows, facts, data_note)
    print("\n" + text)
    atomic.write_text(out / "timings.json", json.dumps({"facts": facts, "data": data_note, "steps": rows}, indent=1))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _downloaded(env: str) -> bool:
    """Whether the data set of ``env`` is at its default location (downloaded there earlier)."""
    from cifarlib.data import sources

    name = "cifar10" if env == paths.ENV_DATA else "mnist"
    root = sources.default_root(name)
    return root.is_dir() and any(root.iterdir())


def _weights_at_hand() -> bool:
    from cifarlib.models import transfer

    try:
        transfer.check_weights()
        return True
    except CifarlibError:
        return False
