"""``python -m cifarlib bench``: training throughput of cifarlib against a reference pipeline.

Both sides train the same model (same initial weights) on the same images with SGD at the same batch
size for the same number of steps, in this process:

- reference: the starter-code pipeline — a torchvision-style data set of PIL images ->
  ``ToTensor`` -> ``Normalize`` -> ``DataLoader(num_workers=2)``, a plain fp32 loop;
- cifarlib: ``data.Loader`` (the split lives on the device as uint8, batches are normalized there)
  and ``train.train_step`` with the precision ``auto`` picks and channels_last, as ``fit`` trains.

Images/s are measured after a few warm-up steps. A full epoch (45,000 train images, then evaluation
of 5,000 validation and 10,000 test images) is extrapolated from the measured rates; the cifarlib
epoch also evaluates its 5,000-image training subset, as ``fit`` does.
"""

from __future__ import annotations

import os
import statistics
import time
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from cifarlib import data, models, paths
from cifarlib.models.cifar import Table1Net
from cifarlib.train import TrainConfig, evaluate, make_optimizer, resolve_device, resolve_precision, train_step
from cifarlib.errors import OneLineParser

EPOCH = {"train": 45_000, "val": 5_000, "test": 10_000, "train_eval": 5_000}  # CIFAR-10, 10% validation
WARMUP_STEPS = 5


class PILImageSet(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does: HWC uint8 arrays in memory, one PIL image per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[i])), self.labels[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(loader):
    while True:
        yield from loader


def _time_steps(step, batches, steps: int, device) -> float:
    """Seconds for ``steps`` calls of ``step(x, y)`` after WARMUP_STEPS untimed ones."""
    for x, y in islice(batches, WARMUP_STEPS):
        step(x, y)
    _sync(device)
    start = time.perf_counter()
    for x, y in islice(batches, steps):
        step(x, y)
    _sync(device)
    seconds = time.perf_counter() - start
    batches.close()  # ends a DataLoader's worker processes now, before the next pipeline is timed
    return seconds


def reference(make_model, splits: data.Splits, device, steps: int, batch_size: int, workers: int) -> dict:
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(splits.mean, splits.std)])
    model = make_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step(x, y):
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def loader(s, shuffle):
        return torch.utils.data.DataLoader(PILImageSet(s.images, s.labels, tf), batch_size=batch_size,
                                           shuffle=shuffle, num_workers=workers)

    model.train()
    train_s = _time_steps(step, _endless(loader(splits.train, True)), steps, device)
    model.eval()
    start = time.perf_counter()  # includes starting the workers, as every epoch of the starter code does
    with torch.no_grad():
        for x, y in loader(splits.val, False):
            model(x.to(device)).argmax(1).eq(y.to(device)).sum().item()
    eval_s = time.perf_counter() - start
    return {"train_ips": steps * batch_size / train_s, "eval_ips": len(splits.val) / eval_s, "precision": "fp32"}


def _cifarlib_trainer(make_model, splits: data.Splits, device, batch_size: int, precision: str = "auto"):
    """cifarlib's training step as ``fit`` runs it (``data.Loader`` on the device, ``train_step`` with the
    precision ``auto`` picks, channels_last): (step(x, y), endless training batches, model, config, precision)."""
    cfg = TrainConfig(batch_size=batch_size, precision=precision, channels_last=True)
    precision = resolve_precision(cfg.precision, device)
    model = make_model().to(device, memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batches = _endless(data.Loader(splits.train, batch_size, shuffle=True, seed=0, mean=splits.mean, std=splits.std,
                                   device=device, channels_last=True))
    model.train()
    return (lambda x, y: train_step(model, opt, scaler, x, y, cfg, precision)), batches, model, cfg, precision


def cifarlib_pipeline(make_model, splits: data.Splits, device, steps: int, batch_size: int,
                      precision: str = "auto") -> dict:
    step, batches, model, cfg, precision = _cifarlib_trainer(make_model, splits, device, batch_size, precision)
    train_s = _time_steps(step, batches, steps, device)
    val_loader = data.Loader(splits.val, cfg.eval_batch_size, mean=splits.mean, std=splits.std, device=device,
                             channels_last=True)
    evaluate(model, islice(val_loader, 1), device, precision=precision)  # warm-up
    start = time.perf_counter()
    evaluate(model, val_loader, device, precision=precision)
    eval_s = time.perf_counter() - start
    return {"train_ips": steps * batch_size / train_s, "eval_ips": len(splits.val) / eval_s,
            "precision": precision}


def epoch_seconds(result: dict, train_eval: bool) -> float:
    evaluated = EPOCH["val"] + EPOCH["test"] + (EPOCH["train_eval"] if train_eval else 0)
    return EPOCH["train"] / result["train_ips"] + evaluated / result["eval_ips"]


def compare(title: str, make_model, splits, device, steps: int, batch_size: int, workers: int,
            fp32_too: bool = False) -> float:
    ref = reference(make_model, splits, device, steps, batch_size, workers)
    lib = cifarlib_pipeline(make_model, splits, device, steps, batch_size)
    params = models.count_params(make_model())
    print(f"\n{title} ({params:,} params), batch {batch_size}, SGD, {steps} timed steps after {WARMUP_STEPS} warm-up")
    print(f"  {'pipeline':<58} {'train img/s':>11} {'eval img/s':>10} {'epoch s':>8}")
    rows = [(f"reference (PIL -> ToTensor/Normalize, {workers} workers, fp32)", ref, False),
            (f"cifarlib (Loader on {device.type}, {lib['precision']}, channels_last)", lib, True)]
    if fp32_too and lib["precision"] != "fp32":  # separates the data-pipeline gain from the precision gain
        fp32 = cifarlib_pipeline(make_model, splits, device, steps, batch_size, precision="fp32")
        rows.append((f"cifarlib (Loader on {device.type}, fp32, channels_last)", fp32, True))
    for label, r, train_eval in rows:
        print(f"  {label:<58} {r['train_ips']:>11,.0f} {r['eval_ips']:>10,.0f} {epoch_seconds(r, train_eval):>8.1f}")
    return lib["train_ips"] / ref["train_ips"]


def bench_data(data_root, steps: int, batch_size: int) -> tuple[data.Splits, str]:
    """The shared CIFAR-10 when a root is given (or $CIFARLIB_DATA is set), synthetic 32x32 otherwise."""
    if data_root is not None or os.environ.get(paths.ENV_DATA):
        ds = data.load("cifar10", root=data_root)
        label = f"CIFAR-10 ({ds.source}, {ds.root})"
    else:
        n_train = max(2000, int(1.2 * (steps + WARMUP_STEPS) * batch_size))  # no epoch restart while timed
        ds = data.synthetic(n_train=n_train, n_test=500, size=32)
        label = f"synthetic 32x32 ({n_train:,} train images; set --data-root for CIFAR-10)"
    return data.split(ds, val_fraction=0.1, seed=0), label


def cli(argv: list[str]) -> int:
    p = OneLineParser(prog="python -m cifarlib bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", help=f"CIFAR-10 root (default ${paths.ENV_DATA}; synthetic data when unset)")
    p.add_argument("--steps", type=int, default=100, help="timed training steps per pipeline")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--fp32", action="store_true", help="also time cifarlib in fp32 (what precision auto gains)")
    p.add_argument("--repeat", type=int, default=3, help="times the comparison is repeated; the median speedup is "
                   "the result (default 3)")
    p.add_argument("--profile", action="store_true",
                   help="instead: where a cifarlib training step of the Table-1 CNN spends its time (by operator), "
                        "and its arithmetic rate against this machine's fp32 and bf16 matrix-product rates")
    p.add_argument("--load", action="store_true",
                   help="instead: cifarlib's training throughput idle and beside a competing 2-thread torch process, "
                        "for torch's default threads, OpenMP's passive wait policy, one thread and cifarlib's "
                        "choice (threads from the free cores), side by side")
    p.add_argument("--sweep", type=int, metavar="RUNS", default=None,
                   help="instead: time a sweep of RUNS short Model A runs, serial (one process, every core) "
                        "against the local executor (worker processes), side by side")
    args = p.parse_args(argv)
    if args.sweep is not None:
        if args.sweep < 1:
            p.error(f"--sweep needs at least 1 run, got {args.sweep}")
        return sweep_bench(args.sweep, args.data_root, args.device)
    if args.steps < 1 or args.batch_size < 1 or args.workers < 0:
        p.error("--steps and --batch-size must be >= 1 and --workers >= 0")
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.load:
        return load_bench(args.data_root, args.steps, args.batch_size)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.batch_size > EPOCH["train"]:  # checked before synthetic data sized to the batch fills the memory
        p.error(f"--batch-size {args.batch_size} is larger than the {EPOCH['train']:,} training images of CIFAR-10; "
                "choose a smaller batch")
    device = resolve_device(args.device)
    splits, label = bench_data(args.data_root, args.steps, args.batch_size)
    if args.batch_size > len(splits.train):
        p.error(f"--batch-size {args.batch_size} is larger than the {len(splits.train):,} training images; "
                "choose a smaller batch")
    shape = dict(in_channels=splits.train.images.shape[1], num_classes=len(splits.classes),
                 image_size=splits.train.images.shape[2])
    print(f"data: {label}")
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"full epoch = {EPOCH['train']:,} train + {EPOCH['val']:,} val + {EPOCH['test']:,} test images "
          f"(cifarlib also evaluates its {EPOCH['train_eval']:,}-image train subset, as fit does)")

    def table1() -> nn.Module:
        torch.manual_seed(0)
        return Table1Net(**shape)

    def wide() -> nn.Module:
        torch.manual_seed(0)
        return Table1Net(**shape, widths=(128, 256, 512))

    if args.profile:
        return profile_step(table1, splits, device, args.steps, args.batch_size)
    speedups = [compare(f"Table-1 CNN, run {k + 1} of {args.repeat}", table1, splits, device, args.steps,
                        args.batch_size, args.workers, args.fp32 and k == 0) for k in range(args.repeat)]
    speedup = statistics.median(speedups)
    if device.type == "cuda":
        wide_speedup = compare("Table-1 CNN, widths x4", wide, splits, device, args.steps, args.batch_size,
                               args.workers)
        print(f"wide-model speedup: {wide_speedup:.2f}x")
    if len(speedups) > 1:
        print(f"speedups: {', '.join(f'{x:.2f}x' for x in speedups)}")
    print(f"speedup: {speedup:.2f}x" + (f" (median of {len(speedups)})" if len(speedups) > 1 else ""))
    return 0


def matmul_rate(dtype: torch.dtype, device, n: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of an n×n matrix product in ``dtype`` on ``device``: what this machine's arithmetic
    reaches on the friendliest kernel there is, the ceiling against which a training step is read."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def profile_step(make_model, splits: data.Splits, device, steps: int, batch_size: int) -> int:
    """Where the time of cifarlib's Table-1 training step goes, operator by operator (torch.profiler,
    self time), and the step's arithmetic rate (6 × the forward multiply-accumulates per image: the
    forward pass counts 2 FLOP a MAC, the backward pass twice that) against the fp32 and bf16 matrix
    products of :func:`matmul_rate`."""
    from torch.profiler import ProfilerActivity, profile

    from cifarlib import evaluation

    flop = 6 * evaluation.forward_macs(make_model(), (1, *splits.train.images.shape[1:]))
    result = cifarlib_pipeline(make_model, splits, device, steps, batch_size)
    rate = flop * result["train_ips"]
    print(f"\nTable-1 CNN, batch {batch_size}, {result['precision']}, channels_last, {torch.get_num_threads()} threads: "
          f"{result['train_ips']:,.0f} img/s x {flop / 1e6:,.0f} MFLOP a training image = {rate / 1e9:,.1f} GFLOP/s")
    for dtype in (torch.float32, torch.bfloat16):
        peak = matmul_rate(dtype, device)
        print(f"  {str(dtype).removeprefix('torch.')} 1024x1024 matrix product: {peak / 1e9:,.1f} GFLOP/s "
              f"(the step reaches {rate / peak:.0%} of it)")
    step, batches, *_ = _cifarlib_trainer(make_model, splits, device, batch_size)
    for x, y in islice(batches, WARMUP_STEPS):
        step(x, y)
    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        for x, y in islice(batches, steps):
            step(x, y)
        _sync(device)
    batches.close()

    def spent(event) -> float:  # self time in µs: on the GPU where the kernels run, else on the CPU
        if gpu:
            return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        return event.self_cpu_time_total

    events = sorted((e for e in prof.key_averages() if spent(e) > 0), key=spent, reverse=True)
    total = sum(spent(e) for e in events) or 1
    print(f"\nwhere a step's time goes ({steps} steps under the profiler, self {'GPU' if gpu else 'CPU'} time, "
          f"top 15 of {len(events)} operators):")
    print(f"  {'operator':<44} {'share':>6} {'ms a step':>9} {'calls a step':>12}")
    for e in events[:15]:
        print(f"  {e.key[:44]:<44} {spent(e) / total:>6.1%} {spent(e) / 1e3 / steps:>9.2f} {e.count / steps:>12.1f}")
    return 0


def sweep_bench(n_runs: int, data_root, device: str) -> int:
    """Time the same sweep of ``n_runs`` short Model A runs (1 epoch on 15,000 images, seeds 0..n-1) on
    the serial executor (one process with every core) and on the local one (worker processes), each
    into a fresh run folder, and print both wall times and their ratio."""
    import tempfile

    from cifarlib import sweep
    from cifarlib.models.cifar import IMPROVED_A

    dataset = "cifar10" if data_root is not None or os.environ.get(paths.ENV_DATA) else "synthetic"
    base = TrainConfig(name="sweep_bench", dataset=dataset, model="table1_variant",
                       model_kw={k: list(v) if isinstance(v, tuple) else v for k, v in IMPROVED_A.items()},
                       epochs=1, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                       weight_decay=5e-4, scheduler="onecycle", warmup_epochs=0.3, crop_pad=2, flip=True,
                       train_per_class=1500, test_per_class=200, train_eval_size=500, device=device)
    configs = sweep.seeded(base, n_runs)
    from cifarlib import runs

    n_images = len(runs.prepare_splits(base, data_root=data_root).train)  # decoded and cached before the clocks
    cpus = sweep.cpu_count()
    workers, threads = sweep.plan(n_runs)
    print(f"sweep: {n_runs} runs of Model A, 1 epoch on {n_images:,} {dataset} images each; {cpus} cores")
    times = {}
    for label, kw in ((f"serial (1 process x {cpus} threads)", dict(executor="serial", threads=cpus)),
                      (f"local ({workers} workers x {threads} thread{'s' if threads > 1 else ''})",
                       dict(executor="local"))):
        with tempfile.TemporaryDirectory(prefix="cifarlib-sweep-bench-") as folder:
            start = time.perf_counter()
            sweep.run_many(configs, data_root=data_root, runs_dir=folder, force=True, progress=False, **kw)
            times[label] = time.perf_counter() - start
        print(f"  {label:<32} {times[label]:7.1f} s  ({times[label] / n_runs:.1f} s a run)")
    serial_s, local_s = times.values()
    print(f"local executor speedup over serial: {serial_s / local_s:.2f}x")
    return 0


# ---- beside a competing process ---------------------------------------------------------------------

# One measurement in a fresh process: torch is imported first, so that the OpenMP wait policy in the
# environment (or its absence) is what the thread pool starts with.
_MEASURE = """
import json, sys
import torch
args = json.loads(sys.argv[1])
from cifarlib import bench, train
torch.set_num_threads(train.threads_for_load(2) if args["threads"] == "auto" else args["threads"])
from cifarlib.models.cifar import Table1Net
splits, _ = bench.bench_data(args["data_root"], args["steps"], args["batch"])
shape = dict(in_channels=splits.train.images.shape[1], num_classes=len(splits.classes),
             image_size=splits.train.images.shape[2])
def table1():
    torch.manual_seed(0)
    return Table1Net(**shape)
result = bench.cifarlib_pipeline(table1, splits, torch.device("cpu"), args["steps"], args["batch"])
print(json.dumps({**result, "threads": torch.get_num_threads()}))
"""
# The competitor: another 2-thread torch job (matrix products) with OpenMP's default wait policy.
_COMPETE = """
import torch
torch.set_num_threads(2)
a = torch.randn(768, 768)
while True:
    a = torch.tanh(a @ a)
"""
LOAD_SETTINGS = (  # (label, OpenMP environment: None for OpenMP's defaults, torch threads or "auto")
    ("2 threads (torch's default)", None, 2),
    ("2 threads, passive OpenMP wait policy", {"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    ("1 thread", None, 1),
    ("cifarlib: threads from the free cores", None, "auto"),
)
OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _measure(omp: dict | None, threads, data_root, steps: int, batch_size: int) -> tuple[float, int]:
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS} | (omp or {})
    arg = json.dumps({"data_root": data_root, "steps": steps, "batch": batch_size, "threads": threads})
    out = subprocess.run([sys.executable, "-c", _MEASURE, arg], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {out.stderr.strip().splitlines()[-1:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["train_ips"], result["threads"]


def load_bench(data_root, steps: int, batch_size: int) -> int:
    """The Table-1 model's training throughput (cifarlib's pipeline, CPU) for each of LOAD_SETTINGS, idle
    and beside a competing 2-thread torch process, each in a fresh process; one table."""
    import subprocess
    import sys

    print(f"Table-1 CNN, batch {batch_size}, {steps} timed steps, CPU with {os.cpu_count()} cores; "
          "competitor: a 2-thread torch job (OpenMP's default policy)")
    print(f"  {'setting':<42} {'idle img/s':>10} {'beside load':>11} {'share':>6}  threads (idle/load)")
    rows = []
    for label, omp, threads in LOAD_SETTINGS:
        idle, t_idle = _measure(omp, threads, data_root, steps, batch_size)
        env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}
        rival = subprocess.Popen([sys.executable, "-c", _COMPETE], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.0)  # the competitor is up and computing
            loaded, t_loaded = _measure(omp, threads, data_root, steps, batch_size)
        finally:
            rival.kill()
            rival.wait()
        rows.append((label, idle, loaded))
        print(f"  {label:<42} {idle:>10,.0f} {loaded:>11,.0f} {loaded / idle:>6.0%}  {t_idle}/{t_loaded}")
    (_, base_idle, _), (label, idle, loaded) = rows[0], rows[-1]
    print(f"{label}: idle {idle / base_idle:.0%} of the default's idle throughput; beside load {loaded / base_idle:.0%} "
          f"of the default's idle (the default itself: {rows[0][2] / base_idle:.0%})")
    return 0
