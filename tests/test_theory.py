"""cifarlib.theory: every hand computation against torch itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cifarlib import theory
from cifarlib.errors import CifarlibError
from cifarlib.models import build_model, count_params

# ---- convolution by hand ----------------------------------------------------------------------

# The results printed by the example reports (000 for its row order, 002 for the swapped one).
REPORT_000_RESULT = [[-7, 4, -6, 2, 13], [-20, 10, 2, -2, 18], [-23, 8, 14, -6, 9]]
REPORT_002_RESULT = [[-11, 2, 4, -1, 7], [-24, 8, 12, -5, 12], [-19, 10, 4, -3, 15]]


@pytest.mark.parametrize("flip", [True, False])
def test_conv_example_matches_torch(flip):
    hand = theory.conv2d_by_hand(theory.CONV_IMAGE, theory.SOBEL_KERNEL, padding=1, flip=flip)
    k = torch.tensor(theory.SOBEL_KERNEL, dtype=torch.float64)
    k = k.flip(0, 1) if flip else k
    ref = F.conv2d(torch.tensor(theory.CONV_IMAGE, dtype=torch.float64)[None, None], k[None, None], padding=1)
    assert hand.shape == (3, 5)
    torch.testing.assert_close(hand, ref[0, 0], rtol=0, atol=1e-12)


def test_each_reported_result_is_the_true_convolution_of_that_reports_image():
    conv = theory.conv2d_by_hand(theory.CONV_IMAGE, theory.SOBEL_KERNEL, padding=1)
    swapped = theory.conv2d_by_hand(theory.CONV_IMAGE_ROWS_SWAPPED, theory.SOBEL_KERNEL, padding=1)
    assert conv.tolist() == REPORT_000_RESULT
    assert swapped.tolist() == REPORT_002_RESULT


def test_cross_correlation_of_an_antisymmetric_kernel_is_minus_the_convolution():
    conv = theory.conv2d_by_hand(theory.CONV_IMAGE, theory.SOBEL_KERNEL, padding=1, flip=True)
    xcorr = theory.conv2d_by_hand(theory.CONV_IMAGE, theory.SOBEL_KERNEL, padding=1, flip=False)
    assert torch.equal(xcorr, -conv)


@pytest.mark.parametrize("shape,kshape,padding,stride", [
    ((7, 9), (3, 3), 0, 1), ((7, 9), (3, 3), 1, 2), ((8, 6), (2, 4), 2, 3), ((5, 5), (5, 5), 0, 1),
    ((6, 11), (1, 3), 1, 2),
])
@pytest.mark.parametrize("flip", [True, False])
def test_conv_by_hand_matches_torch_on_random_inputs(shape, kshape, padding, stride, flip):
    g = torch.Generator().manual_seed(0)
    x, k = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(kshape, generator=g, dtype=torch.float64)
    hand = theory.conv2d_by_hand(x, k, padding=padding, stride=stride, flip=flip)
    kk = k.flip(0, 1) if flip else k
    ref = F.conv2d(x[None, None], kk[None, None], padding=padding, stride=stride)[0, 0]
    torch.testing.assert_close(hand, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(theory.conv2d_torch(x, k, padding, stride, flip), ref)


def _evaluate_worked_sum(text: str) -> tuple[float, float]:
    """(value of the written products, the stated result) of one ``y[r,c] = ... = v`` line."""
    _, products, stated = text.split(" = ")
    return eval(products.replace("·", "*"), {}), float(stated)  # noqa: S307 (our own generated arithmetic)


def test_worked_column_lines_add_up_to_the_result():
    result = theory.conv2d_by_hand(theory.CONV_IMAGE, theory.SOBEL_KERNEL, padding=1)
    lines = theory.worked_column(theory.CONV_IMAGE, theory.SOBEL_KERNEL, 0, padding=1).splitlines()
    assert len(lines) == 3
    for row, line in enumerate(lines):
        assert line.startswith(f"y[{row},0] = ")
        assert line.count("·") == 9
        written, stated = _evaluate_worked_sum(line)
        assert written == stated == result[row, 0]


def test_worked_sum_with_stride_and_no_flip_matches_torch():
    g = torch.Generator().manual_seed(1)
    x, k = torch.randint(-5, 6, (6, 7), generator=g), torch.randint(-3, 4, (3, 3), generator=g)
    ref = theory.conv2d_torch(x, k, padding=1, stride=2, flip=False)
    written, stated = _evaluate_worked_sum(theory.worked_sum(x, k, 2, 1, padding=1, stride=2, flip=False))
    assert written == stated == ref[2, 1]


def test_worked_sum_outside_the_result_is_refused():
    with pytest.raises(CifarlibError, match="outside"):
        theory.worked_sum(theory.CONV_IMAGE, theory.SOBEL_KERNEL, 3, 0, padding=1)


def test_conv_comparison_reports_zero_deviation_from_torch():
    out = theory.conv_comparison(theory.CONV_IMAGE, theory.SOBEL_KERNEL, padding=1)
    assert out["convolution: largest difference to torch"] == 0
    assert out["cross-correlation: largest difference to torch"] == 0


def test_bad_matrices_are_refused_in_one_line():
    with pytest.raises(CifarlibError) as err:
        theory.conv2d_by_hand([1, 2, 3], theory.SOBEL_KERNEL)
    assert "\n" not in str(err.value)
    with pytest.raises(CifarlibError, match="larger than the padded input"):
        theory.conv2d_by_hand([[1, 2], [3, 4]], theory.SOBEL_KERNEL)


def test_latex_matrix():
    assert theory.latex_matrix([[1, -2], [0.5, 3]]) == r"\begin{pmatrix} 1 & -2 \\ 0.5 & 3 \end{pmatrix}"


# ---- the normalized filter of the Technion homework --------------------------------------------

HW_PRINTED_STRIDE2_PAD1 = [[1.3, 2.7, 1.9], [1.9, 5.25, 3.1], [0.5, 3.5, 1.7]]
HW_PRINTED_STRIDE1_PAD2_ROW3 = [0.4, 1.9, 3.75, 5.25, 5.15, 3.1, 1.0]  # printed "5.145": a misprint of 5.15


def test_homework_filter_is_normalized_and_reproduces_the_printed_results():
    assert float(torch.tensor(theory.HW_FILTER).sum()) == pytest.approx(1.0)
    out = theory.filter_outputs(theory.HW_IMAGE, theory.HW_FILTER)
    assert out[(2, 1)].shape == (theory.output_size(5, 3, 1, 2),) * 2 == (3, 3)
    assert out[(1, 2)].shape == (theory.output_size(5, 3, 2, 1),) * 2 == (7, 7)
    torch.testing.assert_close(out[(2, 1)], torch.tensor(HW_PRINTED_STRIDE2_PAD1, dtype=torch.float64))
    torch.testing.assert_close(out[(1, 2)][3], torch.tensor(HW_PRINTED_STRIDE1_PAD2_ROW3, dtype=torch.float64))


@pytest.mark.parametrize("stride,padding", [(2, 1), (1, 2)])
def test_homework_filter_outputs_match_torch_conv_layer(stride, padding):
    layer = nn.Conv2d(1, 1, 3, stride=stride, padding=padding, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(theory.HW_FILTER, dtype=torch.float64)[None, None])
        ref = layer(torch.tensor(theory.HW_IMAGE, dtype=torch.float64)[None, None])[0, 0]
    torch.testing.assert_close(theory.filter_outputs(theory.HW_IMAGE, theory.HW_FILTER)[(stride, padding)], ref)


def test_normalized_box_filter_keeps_a_constant_image():
    box = theory.normalized(torch.ones(3, 3))
    out = theory.conv2d_by_hand(torch.full((5, 5), 7.0), box, padding=0)
    torch.testing.assert_close(out, torch.full((3, 3), 7.0, dtype=torch.float64))
    with pytest.raises(CifarlibError, match="sums to 0"):
        theory.normalized(theory.SOBEL_KERNEL)


# ---- sizes --------------------------------------------------------------------------------------


def _side(layer: nn.Module, size: int) -> int:
    return layer(torch.zeros(1, 1, size, size)).shape[-1]


@pytest.mark.parametrize("size,kernel,padding,stride", [
    (32, 5, 2, 1), (32, 4, 2, 2), (33, 3, 0, 2), (7, 7, 0, 1), (10, 3, 1, 3), (224, 7, 3, 2), (5, 3, 2, 1),
])
def test_output_size_matches_conv_layers(size, kernel, padding, stride):
    assert theory.output_size(size, kernel, padding, stride) == _side(nn.Conv2d(1, 1, kernel, stride, padding), size)


@pytest.mark.parametrize("size,window,stride", [(32, 2, None), (33, 2, None), (31, 3, 2), (508, 2, 2)])
def test_pooled_size_matches_max_pool(size, window, stride):
    assert theory.pooled_size(size, window, stride) == _side(nn.MaxPool2d(window, stride), size)


def test_the_concrete_answers_hold_for_torch_layers():
    assert theory.same_padding(7, 1) == 3
    for size in (8, 32, 99):
        assert _side(nn.Conv2d(1, 1, 7, padding=3), size) == size
    assert theory.kernel_size_for(512, 508) == 5
    assert _side(nn.Conv2d(1, 1, 5), 512) == 508
    assert theory.pooled_size(508) == 254 == _side(nn.MaxPool2d(2, 2), 508)
    assert theory.output_size(254, 3) == 252 == _side(nn.Conv2d(1, 1, 3), 254)


def test_size_answers_table_agrees_with_its_torch_column():
    table = theory.size_answers()
    assert table["answer"].tolist() == [3, 5, 254, 252]
    assert table["PyTorch layer"].tolist() == ["32 -> 32", "512 -> 508", "508 -> 254", "254 -> 252"]


@pytest.mark.parametrize("size_in,size_out,kernel,stride", [
    (32, 32, 5, 1), (32, 16, 3, 2), (32, 16, 4, 2), (28, 30, 3, 1), (17, 9, 3, 2), (10, 4, 3, 3), (9, 9, 1, 1),
])
def test_padding_for_gives_the_requested_size_in_torch(size_in, size_out, kernel, stride):
    p = theory.padding_for(size_in, size_out, kernel, stride)
    assert _side(nn.Conv2d(1, 1, kernel, stride, p), size_in) == size_out
    if p > 0:  # and it is the smallest such padding
        assert theory.output_size(size_in, kernel, p - 1, stride) != size_out


@pytest.mark.parametrize("size_in,size_out,padding,stride",
                         [(512, 508, 0, 1), (32, 32, 1, 1), (32, 16, 1, 2), (9, 3, 0, 3)])
def test_kernel_size_for_gives_the_requested_size_in_torch(size_in, size_out, padding, stride):
    k = theory.kernel_size_for(size_in, size_out, padding, stride)
    assert _side(nn.Conv2d(1, 1, k, stride, padding), size_in) == size_out
    if k < size_in + 2 * padding:  # and it is the largest such kernel: every input pixel is used
        assert theory.output_size(size_in, k + 1, padding, stride) != size_out


def test_same_padding_at_stride_two_needs_the_size():
    p = theory.same_padding(3, stride=2, size=1)
    assert _side(nn.Conv2d(1, 1, 3, 2, p), 1) == 1
    with pytest.raises(CifarlibError, match="pass size="):
        theory.same_padding(3, stride=2)


@pytest.mark.parametrize("call,match", [
    (lambda: theory.same_padding(4), "odd kernel"),
    (lambda: theory.padding_for(32, 32, 4, 1), "no symmetric zero padding"),
    (lambda: theory.padding_for(32, 10, 3, 1), "no symmetric zero padding"),
    (lambda: theory.kernel_size_for(32, 40), "no kernel maps"),
    (lambda: theory.kernel_size_for(32, 17, 0, 2), "no kernel maps"),
    (lambda: theory.output_size(4, 7), "larger than the padded input"),
    (lambda: theory.output_size(32, 3, stride=0), "stride must be an integer"),
    (lambda: theory.output_size(32.0, 3), "size must be an integer"),
    (lambda: theory.output_size(32, 3, padding=-1), "padding must be an integer"),
])
def test_solvers_refuse_impossible_requests_in_one_line(call, match):
    with pytest.raises(CifarlibError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


# ---- parameter counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("c_in,c_out,kernel", [(3, 32, 5), (64, 128, 3), (3, 64, 1), (8, 4, (3, 5))])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_params_match_numel(c_in, c_out, kernel, bias):
    assert theory.conv_params(c_in, c_out, kernel, bias) == count_params(nn.Conv2d(c_in, c_out, kernel, bias=bias))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_params_match_numel(bias):
    assert theory.linear_params(2048, 64, bias) == count_params(nn.Linear(2048, 64, bias=bias))


def test_table1_hand_count_is_390410_and_matches_the_model_layer_by_layer():
    hand = theory.table1_param_table()
    model = build_model("baseline")
    assert hand["parameters"].sum() == 390_410 == count_params(model)
    per_layer = theory.layer_table(model, (1, 3, 32, 32)).query("parameters > 0")
    assert per_layer["parameters"].tolist() == hand["parameters"].tolist()
    assert per_layer["type"].tolist() == ["Conv2d"] * 3 + ["Linear"] * 2


def test_published_totals_are_reproduced_by_the_named_mistakes():
    table = theory.published_count_errors()
    assert table["printed total"].tolist() == table["total under that mistake"].tolist() == [390_186, 400_522]
    assert table["difference to correct"].tolist() == [-(32 + 64 + 128), 2 * 32 + 31 * 64 + 63 * 128]
    assert table["explanation"].str.contains("= 224 ").iloc[0]
    assert table["explanation"].str.contains("= 10,112 too many").iloc[1]


def test_unknown_counting_rule_is_refused():
    with pytest.raises(CifarlibError, match="unknown counting rule"):
        theory.table1_param_table("made up")


def test_one_by_one_convolution_facts():
    table = theory.conv_layer_check(3, 128, 64, 1).set_index("quantity")
    assert (table["by formula"] == table["PyTorch"]).all()
    assert table.loc["output (C x H x W)", "by formula"] == "64 x 128 x 128"
    assert table.loc["parameters with bias", "by formula"] == 256
    assert table.loc["parameters without bias", "by formula"] == 192
    out = nn.Conv2d(3, 64, 1)(torch.zeros(1, 3, 128, 128))
    assert tuple(out.shape) == (1, 64, 128, 128)


def test_with_total_adds_the_sums():
    table = theory.with_total(theory.table1_param_table())
    assert table.iloc[-1]["layer"] == "total" and table.iloc[-1]["parameters"] == 390_410


# ---- layer_table --------------------------------------------------------------------------------


def _outputs_of_leaves(model: nn.Module, x: torch.Tensor) -> list[tuple]:
    """Shapes of the leaf outputs of a purely sequential model, run step by step by hand."""
    shapes = []
    for m in model.modules():
        if not any(True for _ in m.children()):
            x = m(x)
            shapes.append(tuple(x.shape))
    return shapes


def test_layer_table_of_table1_net_has_the_real_shapes():
    model = build_model("baseline").eval()
    table = theory.layer_table(model, (2, 3, 32, 32))
    assert list(table.columns) == theory.LAYER_COLUMNS
    assert table["output shape"].tolist() == _outputs_of_leaves(model, torch.zeros(2, 3, 32, 32))
    assert table["output shape"].iloc[-1] == (2, 10)


def test_layer_table_on_nested_sequentials():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8)), nn.MaxPool2d(2)),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 5),
    )
    table = theory.layer_table(model, (1, 1, 14, 14))
    assert table["layer"].tolist() == ["0.0", "0.1", "1.0.0", "1.0.1", "1.1", "2", "3"]
    assert table["output shape"].tolist() == _outputs_of_leaves(model, torch.zeros(1, 1, 14, 14))
    assert table["parameters"].sum() == count_params(model)


def test_layer_table_on_resnet18_at_256():
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    table = theory.layer_table(model, (1, 3, 256, 256))
    assert table["parameters"].sum() == count_params(model) == 11_689_512
    assert table["output shape"].iloc[0] == (1, 64, 128, 128)  # 7x7/2 stem
    assert table.set_index("layer").loc["layer4.1.bn2", "output shape"] == (1, 512, 8, 8)
    assert table["output shape"].iloc[-1] == (1, 1000)
    assert "layer1.0.relu #2" in set(table["layer"])  # BasicBlock calls its ReLU twice


def test_vgg16_table_total_and_shapes():
    table = theory.vgg16_table(224)
    assert table["parameters"].sum() == 138_357_544
    convs = table[table["type"] == "Conv2d"]
    assert len(convs) == 13 and (table["type"] == "Linear").sum() == 3
    pools = table[table["type"] == "MaxPool2d"]["output shape"].tolist()
    assert [s[-1] for s in pools] == [112, 56, 28, 14, 7]
    assert table["output shape"].iloc[-1] == (1, 1000)
    assert "settings" in table and "kernel_size=(3, 3)" in convs["settings"].iloc[0]


def test_vgg16_table_counts_match_a_real_model_layer_by_layer():
    from torchvision.models import vgg16

    with torch.device("meta"):
        model = vgg16(weights=None)
    expected = [m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert theory.vgg16_table(224).query("parameters > 0")["parameters"].tolist() == expected


class _Tied(nn.Module):
    """Shared weights, a frozen layer, a container-owned parameter, an unused leaf, a tuple output."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 6)
        self.head.weight = nn.Parameter(self.embed.weight.T.contiguous())
        self.tied = nn.Linear(6, 4, bias=False)
        self.tied.weight = self.embed.weight  # same Parameter object
        self.scale = nn.Parameter(torch.ones(4))
        self.unused = nn.Linear(3, 3)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        h = self.norm(self.frozen(self.embed(x))) * self.scale + self.tied(x)
        return self.head(h), h


def test_layer_table_counts_every_parameter_once():
    model = _Tied().train()
    table = theory.layer_table(model, (1, 6))  # batch of 1: BatchNorm1d works because the table runs in eval
    assert table["parameters"].sum() == count_params(model)
    assert table["trainable parameters"].sum() == count_params(model, trainable_only=True)
    rows = table.set_index("layer")
    assert rows.loc["tied", "parameters"] == 0  # its weight was counted with embed
    assert rows.loc["frozen", "trainable parameters"] == 0 and rows.loc["frozen", "parameters"] == 20
    assert rows.loc["_Tied", "parameters"] == 4  # the container's own `scale`
    assert rows.loc["_Tied", "output shape"] == [(1, 6), (1, 4)]
    assert rows.loc["unused", "output shape"] is None and rows.loc["unused", "parameters"] == 12
    assert model.training and model.norm.training  # modes restored


def test_layer_table_accepts_a_tensor_and_a_single_layer():
    table = theory.layer_table(nn.Conv2d(3, 8, 3), torch.zeros(2, 3, 10, 10), details=True)
    assert table["layer"].tolist() == ["Conv2d"]
    assert table["output shape"].iloc[0] == (2, 8, 8, 8)
    assert "kernel_size=(3, 3)" in table["settings"].iloc[0]
    with pytest.raises(CifarlibError, match="input_size"):
        theory.layer_table(nn.ReLU(), "3x32x32")
    with pytest.raises(CifarlibError, match=r"cannot run on an input of shape \(1, 3, 28, 28\)") as err:
        theory.layer_table(build_model("baseline"), (1, 3, 28, 28))  # its dense layer expects 32x32 images
    assert "\n" not in str(err.value)


def test_layer_table_of_every_registered_cifar_model():
    for name, size in (("baseline", 32), ("improved_a", 32), ("improved_b", 32)):
        model = build_model(name)
        table = theory.layer_table(model, (2, 3, size, size))
        assert table["parameters"].sum() == count_params(model), name
        assert table["output shape"].iloc[-1] == (2, 10), name


# ---- batch normalization and back-propagation ---------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 6, 6)])
def test_batchnorm_by_hand_matches_torch_training_mode(shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
    bn = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    bn = bn.double().train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(shape[1], generator=g, dtype=torch.float64))
        ref = bn(x)
    steps = theory.batchnorm_by_hand(x, bn.weight.detach(), bn.bias.detach(), bn.eps)
    torch.testing.assert_close(steps["y"], ref)
    dims = [0] + list(range(2, x.dim()))
    torch.testing.assert_close(steps["x_hat"].mean(dim=dims), torch.zeros(shape[1], dtype=torch.float64))


def test_backprop_by_hand_matches_autograd_and_sgd():
    g = torch.Generator().manual_seed(3)
    x, labels = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    shapes = {"w1": (7, 5), "b1": (7,), "w2": (3, 7), "b2": (3,)}
    params = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    grads, new = theory.backprop_by_hand(x, labels, params, lr=0.1)

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    logits = F.relu(x @ leaves["w1"].T + leaves["b1"]) @ leaves["w2"].T + leaves["b2"]
    F.cross_entropy(logits, labels).backward()
    opt = torch.optim.SGD(leaves.values(), lr=0.1)
    opt.step()
    for k in shapes:
        torch.testing.assert_close(grads[k], leaves[k].grad)
        torch.testing.assert_close(new[k], leaves[k].detach())


def test_the_check_tables_shown_in_the_notebook_report_agreement():
    assert (theory.batchnorm_check()["largest difference"] < 1e-12).all()
    assert (theory.batchnorm_check((10, 3))["largest difference"] < 1e-12).all()
    assert (theory.backprop_check().iloc[:, 1:] < 1e-12).all().all()


def test_layer_table_shows_a_container_that_uses_its_childs_weights_directly_as_one_layer():
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.conv2d(x, self.conv.weight, self.conv.bias)  # self.conv itself never runs

    model = nn.Sequential(Direct(), nn.ReLU())
    table = theory.layer_table(model, (1, 3, 8, 8))
    assert table["layer"].tolist() == ["0", "1"]
    assert table["output shape"].tolist() == [(1, 4, 6, 6), (1, 4, 6, 6)]
    assert table["parameters"].tolist() == [4 * 3 * 9 + 4, 0]
