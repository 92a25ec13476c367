"""Theory by hand, checked against torch: convolution (true and cross-correlation) with worked sums,
output-size / padding / kernel-size solvers, parameter counts, a layer table for any ``nn.Module``,
batch normalization and one back-propagation step written out.

Conventions: images and kernels are 2-D (height x width); hand results are float64 tensors.
Sizes follow torch's rounding: ``out = floor((size + 2*padding - kernel) / stride) + 1``.
"""

from __future__ import annotations

import re
from typing import Sequence

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from cifarlib.errors import CifarlibError, first_line

# --------------------------------------------------------------------------------------------
# Example inputs
# --------------------------------------------------------------------------------------------

# TDT4265 Task 1(a): a 3x5 image and a Sobel-type kernel (horizontal gradient). The example reports
# agree on the kernel and on the first row but print rows 2 and 3 in opposite orders; each report's
# own result is the true convolution of its own image, so both are self-consistent. We use report
# 000's order (the one its printed result belongs to); report 002's order is kept for comparison.
CONV_IMAGE = ((2, 1, 2, 3, 1),
              (4, 5, 0, 7, 0),
              (3, 9, 1, 1, 4))
CONV_IMAGE_ROWS_SWAPPED = (CONV_IMAGE[0], CONV_IMAGE[2], CONV_IMAGE[1])
SOBEL_KERNEL = ((-1, 0, 1),
                (-2, 0, 2),
                (-1, 0, 1))

# Technion 046746 HW2, dry question 1(c): a 3x3 filter whose weights sum to 1, and the 5x5 image it
# was applied to. The image was a figure in the homework; it is recovered here exactly (least squares
# on the homework's printed 7x7 result, residual at rounding level), and it reproduces the printed
# results for both stride/padding choices. The homework slid the filter without flipping it.
HW_FILTER = ((0.10, 0.20, 0.05),
             (0.05, 0.20, 0.10),
             (0.15, 0.10, 0.05))
HW_IMAGE = ((4, 1, 6, 1, 3),
            (3, 2, 7, 7, 2),
            (2, 5, 7, 3, 7),
            (1, 4, 7, 1, 3),
            (0, 1, 6, 4, 4))


def as_matrix(values, name: str = "matrix") -> torch.Tensor:
    """A 2-D float64 tensor from nested sequences, an array or a tensor."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.dim() != 2 or 0 in t.shape:
        raise CifarlibError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(t.shape)}; pass rows of numbers")
    return t


def normalized(kernel) -> torch.Tensor:
    """``kernel`` divided by its sum, so that it averages (a constant image stays constant)."""
    k = as_matrix(kernel, "kernel")
    total = float(k.sum())
    if abs(total) < 1e-12:
        raise CifarlibError("the kernel sums to 0 (an edge detector), so it cannot be normalized; use it as it is")
    return k / total


# --------------------------------------------------------------------------------------------
# Convolution by hand
# --------------------------------------------------------------------------------------------


def flip_kernel(kernel) -> torch.Tensor:
    """Rotate by 180 degrees: true convolution is cross-correlation with this flipped kernel."""
    return as_matrix(kernel, "kernel").flip(0, 1)


def pad_zeros(image, padding: int) -> torch.Tensor:
    """``padding`` rows/columns of zeros on every side."""
    _check_int(padding, "padding", minimum=0)
    return F.pad(as_matrix(image, "image"), (padding,) * 4)


def conv2d_by_hand(image, kernel, padding: int = 0, stride: int = 1, flip: bool = True) -> torch.Tensor:
    """Slide ``kernel`` over the zero-padded ``image`` with two plain loops.

    ``flip=True`` is true convolution (the kernel rotated by 180 degrees); ``flip=False`` is
    cross-correlation, which is what ``torch.nn.Conv2d`` computes.
    """
    k = flip_kernel(kernel) if flip else as_matrix(kernel, "kernel")
    x = pad_zeros(image, padding)
    (kh, kw), (h, w) = k.shape, as_matrix(image, "image").shape
    out = torch.empty(output_size(h, kh, padding, stride), output_size(w, kw, padding, stride), dtype=torch.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (x[i * stride:i * stride + kh, j * stride:j * stride + kw] * k).sum()
    return out


def conv2d_torch(image, kernel, padding: int = 0, stride: int = 1, flip: bool = True) -> torch.Tensor:
    """The same result from ``torch.nn.functional.conv2d`` (the reference for the hand loops)."""
    k = flip_kernel(kernel) if flip else as_matrix(kernel, "kernel")
    x = as_matrix(image, "image")
    return F.conv2d(x[None, None], k[None, None], padding=padding, stride=stride)[0, 0]


def _num(v: float) -> str:
    s = f"{float(v):g}"
    return f"({s})" if s.startswith("-") else s


def worked_sum(image, kernel, row: int, col: int, padding: int = 0, stride: int = 1, flip: bool = True) -> str:
    """One output value written out: ``y[r,c] = x1·k1 + x2·k2 + ... = value`` (inputs after padding,
    kernel after flipping when ``flip``), products in reading order."""
    k = flip_kernel(kernel) if flip else as_matrix(kernel, "kernel")
    x = pad_zeros(image, padding)
    out = conv2d_by_hand(image, kernel, padding, stride, flip)
    if not (0 <= row < out.shape[0] and 0 <= col < out.shape[1]):
        raise CifarlibError(f"output position ({row}, {col}) is outside the {tuple(out.shape)} result; pick one inside")
    window = x[row * stride:row * stride + k.shape[0], col * stride:col * stride + k.shape[1]]
    terms = " + ".join(f"{_num(a)}·{_num(b)}" for a, b in zip(window.flatten(), k.flatten()))
    return f"y[{row},{col}] = {terms} = {float(out[row, col]):g}"


def worked_column(image, kernel, col: int, padding: int = 0, stride: int = 1, flip: bool = True) -> str:
    """:func:`worked_sum` for every output row of column ``col``, one line each."""
    rows = conv2d_by_hand(image, kernel, padding, stride, flip).shape[0]
    return "\n".join(worked_sum(image, kernel, r, col, padding, stride, flip) for r in range(rows))


def latex_matrix(values, digits: int = 4) -> str:
    """A ``pmatrix`` for Markdown/LaTeX cells (integers without decimals)."""
    m = as_matrix(values)
    rows = [" & ".join(f"{round(float(v), digits):g}" for v in r) for r in m]
    return r"\begin{pmatrix} " + r" \\ ".join(rows) + r" \end{pmatrix}"


def latex_equations(named: dict[str, object], digits: int = 4) -> str:
    """``$$ A = (..) \\quad B = (..) $$`` for several named matrices in one display line."""
    parts = [rf"{name} = {latex_matrix(v, digits)}" for name, v in named.items()]
    return "$$" + r" \qquad ".join(parts) + "$$"


def conv_comparison(image, kernel, padding: int = 1, stride: int = 1) -> dict[str, torch.Tensor]:
    """Convolution and cross-correlation by hand, and each one's largest difference to torch's result."""
    out = {}
    for label, flip in (("convolution", True), ("cross-correlation", False)):
        hand = conv2d_by_hand(image, kernel, padding, stride, flip)
        out[label] = hand
        ref = conv2d_torch(image, kernel, padding, stride, flip)
        out[f"{label}: largest difference to torch"] = (hand - ref).abs().max()
    return out


def plot_conv_by_hand(image, kernel, padding: int = 1, stride: int = 1):
    """Four annotated heatmaps: padded image, kernel, convolution and cross-correlation results."""
    import matplotlib.pyplot as plt

    panels = {
        f"image, zero-padded by {padding}": pad_zeros(image, padding),
        "kernel K": as_matrix(kernel, "kernel"),
        "convolution (flipped K)": conv2d_by_hand(image, kernel, padding, stride, flip=True),
        "cross-correlation (K as is)": conv2d_by_hand(image, kernel, padding, stride, flip=False),
    }
    fig = plt.figure(figsize=(6.4, 4.8), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[1, 1])
    top = grid[0, :].subgridspec(1, 2, width_ratios=[7, 3])
    axes = [fig.add_subplot(top[0, 0]), fig.add_subplot(top[0, 1]), fig.add_subplot(grid[1, 0]),
            fig.add_subplot(grid[1, 1])]
    for ax, (title, m) in zip(axes, panels.items()):
        _heatmap(ax, m, title)
    fig.suptitle(f"Convolution by hand: stride {stride}, zero padding {padding}")
    return fig


def _heatmap(ax, m: torch.Tensor, title: str) -> None:
    lim = float(m.abs().max()) or 1.0
    ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i, row in enumerate(m.tolist()):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:g}".replace("-", "\u2212"), ha="center", va="center", fontsize=9,
                    color="white" if abs(v) > 0.6 * lim else "black")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.grid(False)
    ax.set_title(title, fontsize=9)


# --------------------------------------------------------------------------------------------
# Output sizes and the inverse problems
# --------------------------------------------------------------------------------------------


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CifarlibError(f"{name} must be an integer >= {minimum}, got {value!r}; pass a whole number")


def output_size(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    """Side of a convolution or pooling output: ``floor((size + 2*padding - kernel) / stride) + 1``."""
    for value, name, low in ((size, "size", 1), (kernel, "kernel", 1), (padding, "padding", 0), (stride, "stride", 1)):
        _check_int(value, name, low)
    span = size + 2 * padding - kernel
    if span < 0:
        raise CifarlibError(f"kernel {kernel} is larger than the padded input {size + 2 * padding}; "
                            "use a smaller kernel or more padding")
    return span // stride + 1


def pooled_size(size: int, window: int = 2, stride: int | None = None) -> int:
    """Side after ``window`` x ``window`` pooling (stride defaults to the window), no padding."""
    return output_size(size, window, 0, window if stride is None else stride)


def padding_for(size_in: int, size_out: int, kernel: int, stride: int = 1) -> int:
    """Smallest symmetric zero padding P with ``output_size(size_in, kernel, P, stride) == size_out``.

    Output ``size_out`` needs ``stride*(size_out-1) <= size_in + 2P - kernel <= stride*size_out - 1``.
    """
    for value, name in ((size_in, "size_in"), (size_out, "size_out"), (kernel, "kernel"), (stride, "stride")):
        _check_int(value, name, 1)
    low = stride * (size_out - 1) + kernel - size_in  # smallest admissible 2P
    high = low + stride - 1
    two_p = max(0, low + (low % 2))  # round up to even
    if two_p > high:
        raise CifarlibError(f"no symmetric zero padding maps {size_in} to {size_out} with kernel {kernel} and "
                            f"stride {stride} (2P would have to lie in [{low}, {high}] and be even); "
                            "change the kernel size or pad one side more")
    return two_p // 2


def same_padding(kernel: int, stride: int = 1, size: int | None = None) -> int:
    """Padding that keeps the side unchanged; at stride 1 it is ``(kernel - 1) / 2`` for any size."""
    if stride != 1:
        if size is None:
            raise CifarlibError(f"at stride {stride} the padding that keeps the size depends on the input; pass size=")
        return padding_for(size, size, kernel, stride)
    _check_int(kernel, "kernel", 1)
    if kernel % 2 == 0:
        raise CifarlibError(f"a {kernel}x{kernel} kernel at stride 1 needs 2P = {kernel - 1}, which no equal padding "
                            "on both sides gives; use an odd kernel size or pad one side one more")
    return (kernel - 1) // 2


def kernel_size_for(size_in: int, size_out: int, padding: int = 0, stride: int = 1) -> int:
    """Kernel side K with ``output_size(size_in, K, padding, stride) == size_out`` that uses every
    input pixel: ``K = size_in + 2*padding - stride*(size_out - 1)``. (At stride > 1, kernels up to
    ``stride - 1`` smaller give the same size because torch rounds down.)"""
    for value, name, low in ((size_in, "size_in", 1), (size_out, "size_out", 1), (padding, "padding", 0),
                             (stride, "stride", 1)):
        _check_int(value, name, low)
    k = size_in + 2 * padding - stride * (size_out - 1)
    if k < 1:
        raise CifarlibError(f"no kernel maps {size_in} to {size_out} at stride {stride} and padding {padding} "
                            f"(the largest output is {output_size(size_in, 1, padding, stride)}); "
                            "ask for a smaller output or use more padding")
    return k


def _torch_side(layer: nn.Module, size: int) -> int:
    """The side torch's own layer produces for a ``size`` x ``size`` input (shape only, no data)."""
    return layer(torch.empty(1, 1, size, size, device="meta")).shape[-1]


def size_answers() -> pd.DataFrame:
    """TDT4265 Task 1(c)-(f): each answer from the solvers, next to what a torch layer does with it."""
    p = same_padding(7, 1)
    k = kernel_size_for(512, 508)
    pooled = pooled_size(508, 2, 2)
    nxt = output_size(pooled, 3)
    rows = [
        # each formula as the question's setting makes it (no padding: P = 0), without spaces, so that
        # its column (wrapped only at spaces) is never narrower than it
        ("(c)", "padding that keeps the size, 7x7 kernel, stride 1", r"$P=(F-1)/2$", p,
         f"32 -> {_torch_side(nn.Conv2d(1, 1, 7, padding=p), 32)}"),
        ("(d)", "kernel size for 512 -> 508, stride 1, no padding", r"$F=W_\mathrm{in}-S\,(W_\mathrm{out}-1)$", k,
         f"512 -> {_torch_side(nn.Conv2d(1, 1, k), 512)}"),
        ("(e)", "side after 2x2 max-pooling, stride 2", r"$\lfloor(W_\mathrm{in}-F)/S\rfloor+1$", pooled,
         f"508 -> {_torch_side(nn.MaxPool2d(2, 2), 508)}"),
        ("(f)", "side after the next 3x3 convolution, stride 1, no padding", r"$\lfloor(W_\mathrm{in}-F)/S\rfloor+1$", nxt,
         f"{pooled} -> {_torch_side(nn.Conv2d(1, 1, 3), pooled)}"),
    ]
    return pd.DataFrame(rows, columns=["item", "question", "formula", "answer", "PyTorch layer"])


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------


def _pair(kernel) -> tuple[int, int]:
    return (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)


def conv_params(c_in: int, c_out: int, kernel, bias: bool = True) -> int:
    """``(kh * kw * c_in + bias) * c_out``: one kh x kw x c_in weight block and one bias per filter."""
    kh, kw = _pair(kernel)
    return (kh * kw * c_in + int(bias)) * c_out


def linear_params(n_in: int, n_out: int, bias: bool = True) -> int:
    """``(n_in + bias) * n_out``."""
    return (n_in + int(bias)) * n_out


# How each conv layer's count is written: the correct rule, and the two mistakes of the example reports.
CONV_RULES = {
    "correct": (lambda k, ci, co: (k * k * ci + 1) * co, "({k}·{k}·{ci} + 1)·{co}"),
    "no conv bias": (lambda k, ci, co: k * k * ci * co, "{k}·{k}·{ci}·{co}"),
    "bias per input channel": (lambda k, ci, co: (k * k + 1) * ci * co, "({k}·{k} + 1)·{ci}·{co}"),
}


def table1_param_table(rule: str = "correct", in_channels: int = 3, image_size: int = 32,
                       widths: Sequence[int] = (32, 64, 128), kernel: int = 5, hidden: int = 64,
                       num_classes: int = 10) -> pd.DataFrame:
    """The Table-1 network's parameters layer by layer, from the formulas (no model is built).

    ``rule`` picks how conv layers are counted: "correct", or one of the example reports' mistakes
    ("no conv bias", "bias per input channel"). Pooling, ReLU and Flatten have no parameters.
    """
    if rule not in CONV_RULES:
        raise CifarlibError(f"unknown counting rule {rule!r}; use one of {', '.join(CONV_RULES)}")
    count, text = CONV_RULES[rule]
    rows, c, side = [], in_channels, image_size
    for i, w in enumerate(widths, 1):
        formula = text.format(k=kernel, ci=c, co=w)
        rows.append((f"conv{i}", f"{kernel}x{kernel}, {c} -> {w}", formula, count(kernel, c, w)))
        c, side = w, pooled_size(output_size(side, kernel, kernel // 2))
    flat = c * side * side
    for name, n_in, n_out in (("dense1", flat, hidden), ("dense2", hidden, num_classes)):
        rows.append((name, f"{n_in} -> {n_out}", f"({n_in} + 1)·{n_out}", linear_params(n_in, n_out)))
    return pd.DataFrame(rows, columns=["layer", "shape", "formula", "parameters"])


def with_total(df: pd.DataFrame, label_column: str = "layer", label: str = "total") -> pd.DataFrame:
    """``df`` plus a last row holding the sums of its integer columns."""
    total = {col: df[col].sum() for col in df.columns if pd.api.types.is_integer_dtype(df[col])}
    return pd.concat([df, pd.DataFrame([{label_column: label, **total}])], ignore_index=True).fillna("")


def published_count_errors(printed: dict[str, int] | None = None, in_channels: int = 3,
                           widths: Sequence[int] = (32, 64, 128)) -> pd.DataFrame:
    """The example reports' Table-1 totals, the counting mistake behind each, and the proof: the
    mistaken rule reproduces the printed total exactly, and the gap to the correct total is explained."""
    printed = printed or {"no conv bias": 390_186, "bias per input channel": 400_522}
    correct = int(table1_param_table("correct", in_channels, widths=widths)["parameters"].sum())
    pairs = list(zip((in_channels, *widths[:-1]), widths))  # (C_in, C_out) of each conv layer
    why = {
        "no conv bias": "the convolution biases (one per filter) are left out: "
                        + " + ".join(str(co) for _, co in pairs) + f" = {sum(widths):,} too few",
        "bias per input channel": "each filter gets a bias per input channel, (input channels − 1) · filters "
                                  "extra per layer: " + " + ".join(f"{ci - 1} · {co}" for ci, co in pairs)
                                  + f" = {sum((ci - 1) * co for ci, co in pairs):,} too many",
    }
    rows = []
    for rule, claimed in printed.items():
        recomputed = int(table1_param_table(rule, in_channels, widths=widths)["parameters"].sum())
        rows.append((claimed, rule, recomputed, recomputed - correct, why[rule]))
    return pd.DataFrame(rows, columns=["printed total", "mistake", "total under that mistake",
                                       "difference to correct", "explanation"])


def conv_layer_check(in_channels: int, size: int, out_channels: int, kernel: int, stride: int = 1,
                     padding: int = 0) -> pd.DataFrame:
    """Output shape and parameter counts of one conv layer by formula, next to torch's ``nn.Conv2d``."""
    side = output_size(size, kernel, padding, stride)
    layer = {b: nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=b, device="meta")
             for b in (True, False)}
    out = layer[True](torch.empty(1, in_channels, size, size, device="meta"))
    rows = [
        ("output (C x H x W)", f"{out_channels} x {side} x {side}", " x ".join(map(str, out.shape[1:]))),
        ("weights", conv_params(in_channels, out_channels, kernel, bias=False), layer[True].weight.numel()),
        ("biases", out_channels, layer[True].bias.numel()),
        ("parameters with bias", conv_params(in_channels, out_channels, kernel), _numel(layer[True])),
        ("parameters without bias", conv_params(in_channels, out_channels, kernel, bias=False), _numel(layer[False])),
    ]
    return pd.DataFrame(rows, columns=["quantity", "by formula", "PyTorch"])


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def filter_outputs(image, kernel, settings: Sequence[tuple[int, int]] = ((2, 1), (1, 2)), flip: bool = False) -> dict:
    """``kernel`` applied with each (stride, padding): ``{(stride, padding): result}``; sizes are the shapes."""
    return {(s, p): conv2d_by_hand(image, kernel, padding=p, stride=s, flip=flip) for s, p in settings}


# --------------------------------------------------------------------------------------------
# Layer table for any nn.Module
# --------------------------------------------------------------------------------------------

LAYER_COLUMNS = ["layer", "type", "output shape", "parameters", "trainable parameters"]


def _shape_of(out):
    """Shape of a module output: a tuple for a tensor, nested lists/dicts for containers."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return [_shape_of(o) for o in out]
    if isinstance(out, dict):
        return {k: _shape_of(v) for k, v in out.items()}
    return None if out is None else type(out).__name__


def _new_params(module: nn.Module, recurse: bool, seen: set[int]) -> tuple[int, int]:
    """(all, trainable) element counts of parameters not counted before (shared weights count once)."""
    total = trainable = 0
    for p in module.parameters(recurse=recurse):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def _example_input(model: nn.Module, inputs) -> torch.Tensor:
    """``inputs`` as given when a tensor, else zeros of that shape on the model's device and float dtype."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.float32)
    try:
        shape = tuple(int(s) for s in inputs)
    except (TypeError, ValueError):
        raise CifarlibError(f"input_size must be a shape like (1, 3, 32, 32) or a tensor, got {inputs!r}") from None
    return torch.zeros(shape, device=device, dtype=dtype)


def _record(name: str, recurse: bool, rows: list, seen: set, calls: dict, details: bool):
    """A forward hook that appends one row per call (repeated calls get ``#2``, ``#3``... and no parameters)."""

    def hook(mod, args, out):
        calls[name] = calls.get(name, 0) + 1
        label = name if calls[name] == 1 else f"{name} #{calls[name]}"
        row = [label, type(mod).__name__, _shape_of(out), *_new_params(mod, recurse, seen)]
        rows.append(row + ([mod.extra_repr()] if details else []))

    return hook


def _mark_container(name: str, rows: list):
    """A forward hook that leaves a placeholder where a container's call ends (see _resolve_containers)."""

    def hook(mod, args, out):
        rows.append(("container", name, mod, _shape_of(out)))

    return hook


def _resolve_containers(rows: list, calls: dict, seen: set, details: bool) -> list:
    """Keep a container's placeholder as a row only when none of its leaves ran (it used their
    weights directly, e.g. ``F.conv2d(x, self.conv.weight)``): then it is one layer, with its output
    shape and its parameters. Otherwise its leaves have rows of their own and the placeholder goes."""
    out = []
    for row in rows:
        if not (isinstance(row, tuple) and row[0] == "container"):
            out.append(row)
            continue
        _, name, mod, shape = row
        leaves = [f"{name}.{n}" for n, m in mod.named_modules() if n and not any(True for _ in m.children())]
        if not any(leaf in calls for leaf in leaves):
            out.append([name, type(mod).__name__, shape, *_new_params(mod, True, seen)]
                       + ([mod.extra_repr()] if details else []))
    return out


def layer_table(model: nn.Module, input_size, details: bool = False) -> pd.DataFrame:
    """One row per executed leaf module (in execution order) for any ``nn.Module``.

    Columns: layer (qualified name), type, output shape (with the batch dimension), parameters,
    trainable parameters (``requires_grad``); ``details=True`` adds "settings" (torch's
    ``extra_repr``: kernel, stride, padding, features...). ``input_size`` is the full input shape,
    e.g. ``(1, 3, 32, 32)``, or an input tensor. The model runs once in eval mode under ``no_grad``
    (its train/eval flags are restored). A module called twice gets a second row with 0 parameters;
    shared parameters count once; parameters held directly by a container get a row of their own;
    a container that uses its submodules' weights without calling them is one row; leaves that never
    run are listed last with output shape None. So ``parameters`` always sums to
    ``sum(p.numel() for p in model.parameters())``. A model on the "meta" device gives shapes and
    counts without allocating memory.
    """
    x = _example_input(model, input_size)
    rows, seen, calls, hooks = [], set(), {}, []
    modes = {m: m.training for m in model.modules()}
    targets = [(name or type(m).__name__, m, not any(True for _ in m.children()))
               for name, m in model.named_modules()]
    try:
        for i, (name, m, leaf) in enumerate(targets):
            if leaf or any(True for _ in m.parameters(recurse=False)):
                hooks.append(m.register_forward_hook(_record(name, leaf, rows, seen, calls, details)))
            if not leaf and i > 0:  # a container (not the model) may use its children's weights without calling them
                hooks.append(m.register_forward_hook(_mark_container(name, rows)))
        with torch.no_grad():
            model.eval()(x)
    except (RuntimeError, ValueError, TypeError) as err:
        first = first_line(err) or type(err).__name__
        raise CifarlibError(f"the model cannot run on an input of shape {tuple(x.shape)} ({first}); "
                            "pass the input shape it expects, batch dimension first") from err
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    rows = _resolve_containers(rows, calls, seen, details)
    for name, m, leaf in targets:  # never-called leaves (and containers' own parameters) still count
        total, trainable = _new_params(m, leaf, seen)
        if total:
            rows.append([name, type(m).__name__, None, total, trainable] + ([m.extra_repr()] if details else []))
    return pd.DataFrame(rows, columns=LAYER_COLUMNS + (["settings"] if details else []))


def vgg16_table(image_size: int = 224) -> pd.DataFrame:
    """torchvision's ``vgg16(weights=None)`` layer by layer, built on the meta device (no memory, no
    download): output shapes for a ``image_size`` x ``image_size`` RGB image, parameters, settings."""
    from torchvision.models import vgg16

    with torch.device("meta"):
        model = vgg16(weights=None)
    return layer_table(model, (1, 3, image_size, image_size), details=True)


# --------------------------------------------------------------------------------------------
# Batch normalization and one back-propagation step, by hand
# --------------------------------------------------------------------------------------------


def batchnorm_by_hand(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> dict:
    """The four training-mode steps over the batch (and, for (N, C, H, W), the spatial positions) of
    each channel: mean, biased variance, normalized x, scaled and shifted y."""
    dims = [0] + list(range(2, x.dim()))
    view = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + eps)
    y = gamma.view(view) * x_hat + beta.view(view)
    return {"mean": mean.flatten(), "variance": var.flatten(), "x_hat": x_hat, "y": y}


def backprop_by_hand(x: torch.Tensor, labels: torch.Tensor, params: dict, lr: float) -> tuple[dict, dict]:
    """Gradients of the mean cross-entropy for ``x -> W1 x + b1 -> ReLU -> W2 . + b2`` by the chain rule,
    and the parameters after one gradient-descent step ``W <- W - lr * dL/dW``. Returns (grads, new params)."""
    w1, b1, w2, b2 = (params[k] for k in ("w1", "b1", "w2", "b2"))
    z1 = x @ w1.T + b1
    a1 = z1.clamp_min(0)
    logits = a1 @ w2.T + b2
    d_logits = (logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(x.dtype)) / len(x)
    d_z1 = (d_logits @ w2) * (z1 > 0).to(x.dtype)
    grads = {"w2": d_logits.T @ a1, "b2": d_logits.sum(0), "w1": d_z1.T @ x, "b1": d_z1.sum(0)}
    return grads, {k: params[k] - lr * g for k, g in grads.items()}


def batchnorm_check(shape: Sequence[int] = (8, 4, 5, 5), seed: int = 0) -> pd.DataFrame:
    """:func:`batchnorm_by_hand` against ``nn.BatchNorm2d``/``1d`` in training mode on random data:
    per step, the largest deviation (mean and variance also against torch's own reductions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 2 + 3
    c = x.shape[1]
    bn = (nn.BatchNorm2d(c) if x.dim() == 4 else nn.BatchNorm1d(c)).double().train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.normal_(generator=g)
        ref = bn(x)
    hand = batchnorm_by_hand(x, bn.weight.detach(), bn.bias.detach(), bn.eps)
    dims = [0] + list(range(2, x.dim()))
    rows = [("1. batch mean", (hand["mean"] - x.mean(dims)).abs().max()),
            ("2. batch variance (biased)", (hand["variance"] - x.var(dims, unbiased=False)).abs().max()),
            ("3. normalized x̂: its mean (should be 0)", hand["x_hat"].mean(dims).abs().max()),
            ("4. y = γ·x̂ + β, against PyTorch", (hand["y"] - ref).abs().max())]
    return pd.DataFrame([(s, float(d)) for s, d in rows], columns=["step", "largest difference"])


def backprop_check(batch: int = 16, sizes: tuple[int, int, int] = (5, 7, 3), lr: float = 0.1,
                   seed: int = 0) -> pd.DataFrame:
    """:func:`backprop_by_hand` against autograd and ``torch.optim.SGD`` on a random small network:
    per parameter, the largest deviation of the gradient and of the updated value."""
    g = torch.Generator().manual_seed(seed)
    n_in, n_hidden, n_out = sizes
    x = torch.randn(batch, n_in, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_out, (batch,), generator=g)
    shapes = {"w1": (n_hidden, n_in), "b1": (n_hidden,), "w2": (n_out, n_hidden), "b2": (n_out,)}
    params = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    grads, new = backprop_by_hand(x, labels, params, lr)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    F.cross_entropy(F.relu(x @ leaves["w1"].T + leaves["b1"]) @ leaves["w2"].T + leaves["b2"], labels).backward()
    torch.optim.SGD(leaves.values(), lr=lr).step()
    rows = [(k, float((grads[k] - leaves[k].grad).abs().max()), float((new[k] - leaves[k].detach()).abs().max()))
            for k in shapes]
    return pd.DataFrame(rows, columns=["parameter", "gradient: largest difference to autograd",
                                       "after one step: largest difference to PyTorch SGD"])


# --------------------------------------------------------------------------------------------
# Layer tables for a reader
# --------------------------------------------------------------------------------------------

LAYER_NAMES = {"Conv2d": "convolution", "MaxPool2d": "max-pool", "AvgPool2d": "average pool",
               "AdaptiveAvgPool2d": "adaptive average pool", "AdaptiveMaxPool2d": "global max-pool",
               "Linear": "dense", "ReLU": "ReLU", "GELU": "GELU", "Flatten": "flatten", "Dropout": "dropout",
               "BatchNorm2d": "batch norm", "BatchNorm1d": "batch norm", "Identity": "identity",
               "PatchWhitening": "whitening, 2×2 fixed filters", "Scale": "fixed scaling of the scores"}


def reader_layers(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`layer_table` as a reader wants it: layers numbered in order, layer types in words with
    their kernel, stride and padding (when ``details`` were taken), output shapes as C×H×W without
    the batch dimension, and the trainable count only where it differs from the total."""
    rows = []
    for k, row in enumerate(table.to_dict("records"), 1):
        what = LAYER_NAMES.get(row["type"], row["type"])
        settings = str(row.get("settings") or "")
        kernel = re.search(r"kernel_size=\(?(\d+)", settings)
        if kernel:
            stride = re.search(r"stride=\(?(\d+)", settings)
            padding = re.search(r"padding=\(?(\d+)", settings)
            what += f" {kernel[1]}×{kernel[1]}" + (f", stride {stride[1]}" if stride and stride[1] != "1" else "")
            what += f", padding {padding[1]}" if padding and padding[1] != "0" else ""
        channels = re.match(r"(\d+), (\d+),", settings)
        if row["type"] == "Conv2d" and channels:
            what += f", {channels[1]} → {channels[2]} channels"
        features = re.match(r"in_features=(\d+), out_features=(\d+)", settings)
        if features:
            what += f", {features[1]} → {features[2]}"
        shape = row["output shape"]
        dims = [int(d) for d in re.findall(r"\d+", str(shape))][1:] if shape is not None else []
        rows.append({"#": k, "layer": what, "output (C×H×W)": "×".join(map(str, dims)) or "–",
                     "parameters": int(row["parameters"]), "trainable": int(row["trainable parameters"])})
    out = pd.DataFrame(rows)
    if (out["trainable"] == out["parameters"]).all():
        out = out.drop(columns="trainable")
    return out
