"""ResNet18 transfer model (report part 4): freezing, input mapping, weights files, visualizations.

All models here are built with pretrained=False (no internet, no ImageNet file on CI) and, where the
resolution does not matter, at low resolution.
"""

from __future__ import annotations

import re
import urllib.error

import matplotlib
import pytest
import torch
import torchvision
from torch import nn

from cifarlib import data, visualize
from cifarlib.errors import CifarlibError
from cifarlib.models import build_model, count_params
from cifarlib.models import transfer
from cifarlib.paths import ENV_WEIGHTS

matplotlib.use("Agg")


def small(**kw) -> transfer.ResNet18Transfer:
    torch.manual_seed(0)
    return build_model("resnet18_transfer", pretrained=False, **{"resolution": 64, **kw})


@pytest.fixture(scope="module")
def model():
    return small()


@pytest.fixture
def no_download(monkeypatch):
    """No internet: torchvision's download raises as urllib does offline."""
    def fail():
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(transfer, "_download_imagenet_state", fail)
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)


def save_state(net: nn.Module, path, drop=()) -> dict:
    state = {k: v for k, v in net.state_dict().items() if not k.endswith(drop)} if drop else net.state_dict()
    torch.save(state, path)
    return state


# ---- freezing ------------------------------------------------------------------------------------

def test_exactly_layer4_and_fc_are_trainable(model):
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("net.layer4.", "net.fc.")) for n in trainable)
    expected = sum(p.numel() for p in torchvision.models.resnet18().layer4.parameters()) + 512 * 10 + 10
    assert count_params(model, trainable_only=True) == expected == 8_398_858
    assert count_params(model) == 11_181_642  # all of resnet18 with a 10-way head


def test_frozen_batchnorm_stays_in_eval_mode(model):
    model.train()
    frozen_bn = [m for f in model.frozen_modules() for m in f.modules() if isinstance(m, nn.BatchNorm2d)]
    layer4_bn = [m for m in model.net.layer4.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(frozen_bn) == 1 + 4 + 5 + 5 and len(layer4_bn) == 5  # stem, layer1 (no downsample), layer2, layer3
    assert model.training and not any(m.training for m in frozen_bn) and all(m.training for m in layer4_bn)
    model.eval()
    assert not any(m.training for m in frozen_bn + layer4_bn)
    model.train()
    assert not any(m.training for m in frozen_bn)


def test_training_forward_keeps_frozen_running_stats():
    m = small(resolution=32).train()
    before_stem = m.net.bn1.running_mean.clone()
    before_l4 = m.net.layer4[1].bn2.running_mean.clone()
    m(torch.randn(4, 3, 32, 32))
    assert torch.equal(m.net.bn1.running_mean, before_stem)
    assert not torch.equal(m.net.layer4[1].bn2.running_mean, before_l4)


def test_frozen_part_builds_no_graph_and_gets_no_gradient():
    m = small(resolution=32).train()
    seen = {}
    hook = m.net.layer3.register_forward_hook(lambda mod, inp, out: seen.update(out=out))
    logits = m(torch.randn(4, 3, 32, 32))
    hook.remove()
    assert seen["out"].grad_fn is None and not seen["out"].requires_grad
    assert logits.grad_fn is not None
    logits.square().mean().backward()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == name.startswith(("net.layer4.", "net.fc.")), name


def test_one_adam_step_changes_only_layer4_and_fc():
    m = small(resolution=32).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=5e-4)
    nn.functional.cross_entropy(m(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    opt.step()
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert "net.layer4.0.conv1.weight" in changed and "net.fc.weight" in changed
    assert all(k.startswith(("net.layer4.", "net.fc.")) for k in changed), sorted(changed)


# ---- inputs ---------------------------------------------------------------------------------------

def test_data_normalized_input_is_mapped_to_imagenet_normalization():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m = small(input_mean=mean, input_std=std)
    pixels = torch.rand(2, 3, 32, 32)
    as_loaded = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    imagenet = torchvision.transforms.functional.normalize(pixels, transfer.IMAGENET_MEAN, transfer.IMAGENET_STD)
    torch.testing.assert_close(m.to_imagenet(as_loaded), imagenet)
    assert m.resize(as_loaded).shape == (2, 3, 64, 64)
    assert "input_mean" in m.state_dict()  # the statistics travel with saved weights


def test_bad_arguments_are_one_line_errors():
    for kw, word in [(dict(resolution=16), "resolution"), (dict(in_channels=1), "RGB"),
                     (dict(upsample="cubic"), "upsample"), (dict(weights_path="x.pth"), "pretrained=False")]:
        with pytest.raises(CifarlibError, match=word) as err:
            build_model("resnet18_transfer", pretrained=False, **kw)
        assert "\n" not in str(err.value)


# ---- weights files ------------------------------------------------------------------------------

def test_good_weights_file_is_loaded(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18-random.pth"
    save_state(source, path, drop=("num_batches_tracked",))  # like torchvision's own (older) file
    for how in ("argument", "environment"):
        if how == "argument":
            m = build_model("resnet18_transfer", weights_path=str(path), resolution=32)
        else:
            monkeypatch.setenv(ENV_WEIGHTS, str(path))
            m = build_model("resnet18_transfer", resolution=32)
        assert m.pretrained
        loaded = m.net.state_dict()
        for k, v in source.state_dict().items():
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
                assert torch.equal(loaded[k], v), k
        assert m.net.fc.out_features == 10


def resnet18_with_3x3_stem() -> dict:
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    return state


@pytest.mark.parametrize("make, problem", [
    (lambda: torchvision.models.resnet34().state_dict(), "unexpected keys"),
    (lambda: build_model("baseline").state_dict(), "missing keys"),
    (resnet18_with_3x3_stem, "shape mismatch"),
])
def test_weights_of_another_architecture_is_a_clear_error(tmp_path, make, problem):
    path = tmp_path / "other.pth"
    torch.save(make(), path)
    with pytest.raises(CifarlibError) as err:
        build_model("resnet18_transfer", weights_path=str(path))
    message = str(err.value)
    assert str(path) in message and problem in message and "resnet18" in message and "\n" not in message


@pytest.mark.parametrize("content", [b"this is not a torch file", b"PK\x03\x04 truncated zip", b""])
def test_corrupt_weights_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)
    with pytest.raises(CifarlibError, match="cannot be read") as err:
        build_model("resnet18_transfer", weights_path=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_real_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "truncated.pth"
    save_state(torchvision.models.resnet18(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CifarlibError, match="cannot be read"):
        build_model("resnet18_transfer", weights_path=str(path))


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CifarlibError, match="not a state_dict"):
        build_model("resnet18_transfer", weights_path=str(path))
    with pytest.raises(CifarlibError, match="does not exist"):
        build_model("resnet18_transfer", weights_path=str(tmp_path / "nowhere.pth"))


def test_missing_weights_error_names_both_remedies(no_download):
    with pytest.raises(CifarlibError) as err:
        build_model("resnet18_transfer")
    message = str(err.value)
    assert "\n" not in message and "URLError" in message
    assert "internet" in message  # remedy 1: the torchvision download
    assert ENV_WEIGHTS in message and "weights_path" in message and transfer.WEIGHTS_FILE in message  # remedy 2


def test_not_pretrained_is_labelled_and_the_flag_travels_with_the_weights(tmp_path, monkeypatch):
    plain = small(resolution=32)
    assert not plain.pretrained and "NOT PRETRAINED" in transfer.weights_label(plain)
    path = tmp_path / "resnet18.pth"
    save_state(torchvision.models.resnet18(), path)
    monkeypatch.setenv(ENV_WEIGHTS, str(path))
    trained = build_model("resnet18_transfer", resolution=32)
    plain.load_state_dict(trained.state_dict())  # what loading a run record does
    assert plain.pretrained and transfer.weights_label(plain) == "ImageNet weights"


# ---- visualizations ------------------------------------------------------------------------------

def test_activation_shapes_at_256(model):
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    shown, first = visualize.first_layer_activations(model, image)
    assert shown.shape == (3, 256, 256) and 0 <= shown.min() and shown.max() <= 1
    assert first.shape == (1, 64, 128, 128)
    assert visualize.last_conv_activations(model, image).shape == (1, 512, 8, 8)
    assert model.training  # the mode is restored


def test_last_conv_activations_match_the_model_forward():
    """The visualization path (pixels -> ImageNet normalization) sees what the model sees when it
    gets the loader's data-normalized tensor."""
    m = small(resolution=256).eval()
    pixels = torch.rand(3, 32, 32)
    as_loaded = (pixels - m.input_mean[0]) / m.input_std[0]
    seen = {}
    hook = m.net.layer4.register_forward_hook(lambda mod, inp, out: seen.update(out=out))
    with torch.no_grad():
        m(as_loaded[None])
    hook.remove()
    torch.testing.assert_close(visualize.last_conv_activations(m, pixels), seen["out"], atol=1e-4, rtol=1e-4)


def test_image_file_is_read(tmp_path, model):
    path = tmp_path / "photo.png"
    torchvision.utils.save_image(torch.rand(3, 300, 400), path)
    shown, acts = visualize.first_layer_activations(model, str(path))
    assert shown.shape == (3, 256, 256) and acts.shape == (1, 64, 128, 128)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image")
    with pytest.raises(CifarlibError, match="cannot decode image .*bad.png"):
        visualize.load_image(str(bad))



def test_a_huge_image_file_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "huge.png"
    Image.new("RGB", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own bomb error for 60,000 > 2 x 100 pixels
    with pytest.raises(CifarlibError, match="huge.png"):
        visualize.load_image(str(path))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**9)
    monkeypatch.setattr(data.sources, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(CifarlibError, match="300x200 pixels"):
        visualize.load_image(str(path))


def test_plots_return_titled_figures(model):
    image, acts = visualize.first_layer_activations(model, torch.rand(3, 32, 32), size=64)
    fig = visualize.plot_activations(image, acts, n=16, title="conv1", pretrained=False)
    assert isinstance(fig, matplotlib.figure.Figure)
    maps = [ax for ax in fig.axes if ax.get_title().startswith("ch ")]
    assert len(maps) == 16 and "NOT PRETRAINED" in fig._suptitle.get_text()
    fig = visualize.plot_filters(model.net.conv1.weight, pretrained=True)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert "64 filters of 7×7×3" in fig.axes[0].get_title() and "NOT" not in fig.axes[0].get_title()
    matplotlib.pyplot.close("all")


def test_strongest_channels_picks_the_largest_mean_activation():
    acts = torch.zeros(1, 5, 4, 4)
    acts[0, 3] = -2.0
    acts[0, 1] = 1.0
    assert visualize.strongest_channels(acts, 2) == [3, 1]


# ---- the experiment ----------------------------------------------------------------------------

def test_experiment_follows_the_assignment_hint():
    experiments = pytest.importorskip("cifarlib.experiments")
    full = experiments.config("transfer_resnet18")
    assert (full.model, full.optimizer, full.lr, full.batch_size) == ("resnet18_transfer", "adam", 5e-4, 32)
    assert full.epochs <= 5 and full.early_stop_patience == 2 and full.model_kw["pretrained"] is True
    quick = experiments.config("transfer_resnet18", profile="quick")
    assert quick.model_kw["pretrained"] is False and quick.epochs == 1 and quick.model_kw["resolution"] == 64


def test_notebook_knobs_keep_the_profile_unless_set():
    from cifarlib.experiments import transfer as exp

    quick = exp.notebook_config("quick", pretrained=None, resolution=None, epochs=None, seed=3)
    assert quick.model_kw == {"pretrained": False, "resolution": 64} and quick.epochs == 1 and quick.seed == 3
    full = exp.notebook_config("full", resolution=128, epochs=2)
    assert full.model_kw == {"pretrained": True, "resolution": 128} and full.epochs == 2
    assert exp.notebook_config("quick", weights_path="w.pth").model_kw["pretrained"] is True


def test_cifar_test_index_names_its_class(monkeypatch):
    from cifarlib import data

    monkeypatch.setattr(data, "load", lambda name, root=None: data.synthetic(n_train=20, n_test=10))
    pixels, what = visualize.load_image(4)
    assert pixels.shape == (3, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1
    assert what.startswith("CIFAR-10 test image 4 (class")
    with pytest.raises(CifarlibError, match="outside the CIFAR-10 test set"):
        visualize.load_image(10)


@pytest.mark.slow
def test_finished_pretrained_run_reloads_without_weights_or_internet(tmp_path, no_download):
    """A run trained from a weights file is read back later with neither the file nor the internet."""
    from cifarlib import runs
    from cifarlib.experiments import transfer as exp

    weights = tmp_path / "resnet18.pth"
    save_state(torchvision.models.resnet18(), weights)
    cfg = exp.notebook_config("quick", weights_path=str(weights), resolution=32, dataset="synthetic", device="cpu",
                              train_per_class=4, test_per_class=2)  # 2 steps; evaluation on 60 images
    record = runs.train_or_load(cfg, runs_dir=tmp_path / "runs", progress=False)
    weights.unlink()
    model = exp.load_trained(record)
    assert model.pretrained
    saved = torch.load(record.dir / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("count", [0, 1, 2, 16])
def test_the_task3_discussion_reads_right_for_any_count(count):
    from cifarlib import visualize

    first = visualize.first_layer_text({"shown": 16, "brightness": count, "edges": min(count, 16 - count),
                                        "inverted": count // 2, "channels": 64})
    last = visualize.last_layer_text({"zero_values": 0.39, "silent_channels": count, "channels": 512,
                                      "centre_share": 0.34, "centre_area": 0.25, "side": 8})
    texts = [first, last] + [visualize.filter_text({"filters": 64, "grey": count, "opponent": count, "side": 7}, p)
                             for p in (True, False)]
    for text in texts:
        assert not re.search(r"(^|\. )\d", text), text  # no sentence opens with a digit
        assert not re.search(r"\b[Oo]ne (of the \d+ \w+( shown)? )?(follow|respond|weigh|are)\b", text), text
        assert not re.search(r"\b(None|No map)\b[^.]*\bthey\b", text), text  # nothing to describe after "none"
    if count == 1:
        assert "Of the 16 maps shown, one follows" in first and "one of the 512 channels is zero" in last
        assert "Of the 64 filters, one is nearly grey (its three" in texts[2]
    if count == 16:
        assert "All 16 maps shown follow" in first
