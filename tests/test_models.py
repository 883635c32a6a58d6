"Integration tests of ignore_attn.models: exact sizes, every registry name x attention kind, torchvision interop, errors."
import copy
import json
import re

import pytest
import torch
import torch.nn as nn
import torchvision

from ignore_attn.attention import count_attention
from ignore_attn.flops import count_madds
from ignore_attn.flip import Spec
from ignore_attn.registry import model_entries
from ignore_attn.models import (L2Recipe, ResNetCifar, DenseNetCifar, ResNetImageNet, add_attention, authors_l2,
                                densenet_cifar, get_model, list_models, resnet50, resnet_cifar)

torch.set_num_threads(1)  # the suite shares a small machine; these tests are sized for one core

KINDS = ["standard", "se", "cbam", "se-ign3", "cbam-ign1(0.5)"]

def image_size(name: str) -> int:
    "The registered input size, capped at 64: an ImageNet model at 64x64 keeps CPU cost low (global pooling allows it)."
    return min(model_entries()[name].input_size, 64)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def attention_sites(name: str) -> int:
    "Attention slots of a model, found from the model itself: the blocks it holds with plain SE (exact counts: below)."
    return count_attention(get_model(name, attention="se"))


# Sizes written out by hand in nbs/04_models.ipynb from the architecture (not read from a model).
@pytest.mark.parametrize("name, attention, params, modules", [
    ("resnet50-cifar", "standard", 758_362, 0),
    ("resnet50-cifar", "se", 758_362 + 11_760, 24),
    ("resnet50-cifar", "cbam", 758_362 + 11_760 + 24 * 98, 24),
    ("densenet40-cifar", "standard", 743_938, 0),
    ("densenet40-cifar", "se", 743_938 + 116_361, 5),
    ("densenet40-cifar", "cbam", 743_938 + 116_361 + 5 * 98, 5),
])
def test_exact_cifar_sizes(name, attention, params, modules):
    model = get_model(name, 10, attention)
    assert n_params(model) == params
    assert count_attention(model) == modules


def test_authors_bias_and_shortcut_bn_options():
    assert n_params(resnet_cifar(50, conv_bias=True)) == 760_266          # the authors' Keras convs keep a bias
    assert n_params(resnet_cifar(50, shortcut_bn=True)) == 758_362 + 2 * 32 + 2 * 64   # a BN on each projection
    assert n_params(densenet_cifar(num_classes=100)) == 743_938 - 4_570 + 456 * 100 + 100


def test_resnet50_sizes_and_modules():
    base = n_params(torchvision.models.resnet50(weights=None))
    assert base == 25_557_032
    assert n_params(resnet50()) == base
    se = resnet50(attention="se")
    assert n_params(se) == base + 5_046_880 and count_attention(se) == 16
    assert n_params(resnet50(attention="cbam-ign2")) == base + 5_046_880 + 16 * 98


def test_registry_names():
    names = list_models()
    assert {"resnet50-cifar", "resnet20-cifar", "resnet56-cifar", "densenet40-cifar", "resnet50"} <= set(names)
    assert isinstance(get_model("resnet50-cifar"), ResNetCifar) and get_model("resnet50-cifar").depth == 50
    assert isinstance(get_model("densenet40-cifar"), DenseNetCifar)
    assert isinstance(get_model("resnet50", 3), ResNetImageNet)
    assert get_model("resnet26-cifar").depth == 26
    assert get_model("resnet20-cifar", attention="cbam-ign1(0.8)").spec == Spec("cbam", "ign1", 0.8)


CORE = ["resnet20-cifar", "resnet50-cifar", "densenet40-cifar", "resnet50"]  # one of each code path


def test_core_names_are_listed():
    assert set(CORE) <= set(list_models())


@pytest.mark.parametrize("name, attention", [(n, a) for n in CORE for a in KINDS] +
                         [(n, "cbam-ign1(0.5)") for n in list_models() if n not in CORE])
def test_forward_backward(name, attention):
    torch.manual_seed(0)
    model = get_model(name, num_classes=7, attention=attention)
    size = image_size(name)
    y = model(torch.randn(2, 3, size, size))
    assert y.shape == (2, 7)
    y.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert count_attention(model) == (0 if attention == "standard" else attention_sites(name))


@pytest.mark.parametrize("name", ["resnet20-cifar", "densenet40-cifar", "resnet50"])
def test_channels_last_and_bfloat16(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=5, attention="cbam-ign3").eval()
    size = image_size(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


def test_torchvision_resnet50_weights_load():
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None).eval()
    ours = resnet50()
    ours.load_state_dict(tv.state_dict())                                 # strict: identical names and shapes
    ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))
    se = resnet50(attention="se-ign3")
    res = se.load_state_dict(tv.state_dict(), strict=False)
    assert res.unexpected_keys == []
    assert set(res.missing_keys) == {k for k in se.state_dict() if ".attention." in k}
    assert len(res.missing_keys) == 16 * 4                                # fc1/fc2 weight and bias per block


@pytest.mark.parametrize("build, blocks", [(torchvision.models.resnet18, 8), (torchvision.models.resnet50, 16)])
def test_add_attention(build, blocks):
    torch.manual_seed(0)
    base = build(weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = base(x)
    for spec in ("se", "cbam-ign2"):
        model = add_attention(copy.deepcopy(base), spec)
        assert count_attention(model) == blocks
        with torch.no_grad():
            assert model.eval()(x).shape == (1, 4)
    for spec in ("se-ign1(0.0)", "cbam-ign1(0.0)"):                     # mask exactly 1: nothing changes
        model = add_attention(copy.deepcopy(base), spec).eval()
        with torch.no_grad():
            assert torch.equal(model(x), ref)
    trained = add_attention(copy.deepcopy(base), "se").train()
    trained(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for n, p in trained.named_parameters() if ".attention." in n)


def test_add_attention_names_match_resnet50():
    assert list(add_attention(torchvision.models.resnet50(weights=None), "cbam").state_dict()) == \
        list(resnet50(attention="cbam").state_dict())


@pytest.mark.parametrize("call, message", [
    (lambda: get_model("resnet51-cifar"), "valid depths are 8, 14, 20, 26, 32, 38, 44, 50, 56"),
    (lambda: resnet_cifar(depth=21), "6n+2"),
    (lambda: get_model("resnet18"), "known models:"),
    (lambda: get_model("vgg16-cifar"), "resnet50-cifar"),
    (lambda: get_model("densenet41-cifar"), "3L+4"),
    (lambda: densenet_cifar(reduction=1.0), "reduction"),
    (lambda: get_model("resnet50-cifar", attention="mmtm"), "single-stream"),
    (lambda: get_model("densenet40-cifar", attention="mmtm-ign3"), "single-stream"),
    (lambda: get_model("resnet50", attention="mmtm-ign1(0.5)"), "two streams"),
    (lambda: get_model("resnet20-cifar", attention="se-ign7"), "valid attention specs"),
    (lambda: get_model("resnet20-cifar", num_classes=0), "positive integer"),
    (lambda: add_attention(resnet_cifar(20), "se"), "no torchvision BasicBlock"),
    (lambda: add_attention(add_attention(torchvision.models.resnet18(), "se"), "cbam"), "already has attention"),
    (lambda: add_attention(torchvision.models.resnet18(), "mmtm"), "single-stream"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_bad_types():
    with pytest.raises(TypeError, match="must be a string"):
        get_model(50)
    with pytest.raises(TypeError, match="l2_recipe"):
        authors_l2(torchvision.models.resnet18())


def test_authors_l2():
    model = resnet_cifar(20, attention="cbam", conv_bias=True)
    l2 = authors_l2(model)
    assert isinstance(model.l2_recipe, L2Recipe)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".attention." not in n]
    assert all(l2[f"{n}.weight"] == 5e-4 and l2[f"{n}.bias"] == 5e-4 for n in convs)
    assert l2["fc.weight"] == l2["fc.bias"] == 5e-4
    assert not any(".bn" in k or "stem.1" in k for k in l2)                 # BatchNorm is never regularised
    attention = {k: v for k, v in l2.items() if ".attention." in k}
    assert len(attention) == 9 * 4 and set(attention.values()) == {1e-4}   # CBAM MLP; its 7x7 conv is not listed
    assert not any("spatial" in k for k in l2)
    dense = authors_l2(densenet_cifar())
    assert set(dense.values()) == {1e-4} and len(dense) == 1 + 3 * 12 * 2 + 2 and "fc.weight" not in dense
    assert set(authors_l2(resnet50(attention="se")).values()) == {1e-4}


def test_count_madds_by_hand():
    full, half, proj = 2_359_296, 1_179_648, 131_072                       # 3x3 conv at full width, stride 2, 1x1
    n = 3                                                                  # resnet20: 3 blocks per stage
    backbone = 32 * 32 * 16 * 27 + 2 * n * full + 2 * (half + (2 * n - 1) * full + proj) + 640
    image = torch.zeros(1, 3, 32, 32)
    assert count_madds(resnet_cifar(20), image) == {"backbone": backbone, "attention": 0, "total": backbone}
    se = count_madds(resnet_cifar(20, attention="se"), image)
    attention = n * (16 * 16 + 32 * 32 + 64 * 64) // 4
    assert se == {"backbone": backbone, "attention": attention, "total": backbone + attention}


def test_a_registered_backbone_trains_by_name(tmp_path):
    "wrn16-4-cifar, added by one class and one registration, trains through `ignore-attn train` like the paper's models."
    from ignore_attn.cli import main
    out = tmp_path / "wrn"
    args = ("train --arch wrn16-4-cifar --attention se-ign3 --schedule quick --epochs 1 --batch-size 32 --device cpu "
            "--quiet --n-train 128 --n-val 32 --n-test 32 --image-size 16 --augment none --workers 0").split()
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["arch"], metrics["attention"], metrics["status"]) == ("wrn16-4-cifar", "se-ign3", "done")
    assert metrics["num_params"] == n_params(get_model("wrn16-4-cifar", attention="se-ign3")) and (out / "best.pt").is_file()
