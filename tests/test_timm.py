"ignore_attn.timm: the paper's blocks in timm's ResNets, trained a step, compared with timm's SE, registered by name."
from __future__ import annotations
import logging, pickle

import pytest
import torch
import torch.nn as nn

from ignore_attn.attention import AttentionBlock, count_attention

torch.set_num_threads(1)  # the suite shares a small machine

EXTRA = 'pip install "ignore-attn[timm]"'
timm = pytest.importorskip("timm", reason=f"timm is an optional extra ({EXTRA}); the timm tests need it")
from timm.models.resnet import Bottleneck  # noqa: E402
from ignore_attn import timm as it         # noqa: E402
from ignore_attn.models import resnet50 as paper_resnet50  # noqa: E402


def attention_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for b in model.modules() if isinstance(b, AttentionBlock) for p in b.parameters()]


def perturb_bn_(model: nn.Module) -> nn.Module:
    "Random BN weights and statistics: no residual branch starts at zero, no BN is an identity."
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5); m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.5, 1.5)
    return model


def one_sgd_step(model: nn.Module) -> tuple[float, list[str]]:
    "Loss of one SGD step on a random batch and the names of the parameters that did not change."
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.randint(0, 10, (4,)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attention_params(model))
    opt.step()
    return loss.item(), [k for k, v in model.named_parameters() if torch.equal(v, before[k])]


def test_se_ign3_resnet50_built_by_timm_trains_a_step():
    m = timm.create_model("resnet50", num_classes=10, zero_init_last=False,
                          block_args=dict(attn_layer=it.ignore_layer("se-ign3")))
    assert count_attention(m) == 16 and {str(b.spec) for b in m.modules() if isinstance(b, AttentionBlock)} == {"se-ign3"}
    loss, unchanged = one_sgd_step(m)
    assert torch.isfinite(torch.tensor(loss)) and unchanged == []


def test_cbam_ign1_registered_variant_trains_a_step():
    m = timm.create_model("resnet50_cbam_ign1_050", num_classes=10)
    assert count_attention(m) == 16 and {str(b.spec) for b in m.modules() if isinstance(b, AttentionBlock)} == {"cbam-ign1(0.5)"}
    loss, unchanged = one_sgd_step(m)
    assert torch.isfinite(torch.tensor(loss)) and unchanged == []


def test_timm_default_zero_init_last_starves_attention_of_its_first_gradient():
    "timm zeroes the last BN weight: the block's features are zero, so is the mask's gradient, until step 2."
    m = it.create_model("resnet18", "se-ign3", num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(m(x), y).backward()
    assert all(p.grad.abs().sum() == 0 for p in attention_params(m))
    torch.optim.SGD(m.parameters(), lr=0.1).step(); m.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    assert all(p.grad.abs().sum() > 0 for p in attention_params(m))


def test_block_sits_where_the_paper_puts_it():
    "Our ImageNet ResNet-50 and timm's resnet50 with our block compute the same function on the same weights."
    torch.manual_seed(1)
    ours = perturb_bn_(paper_resnet50(num_classes=10, attention="cbam-ign1(0.5)")).eval()
    tm = timm.create_model("resnet50", num_classes=10, block_args=dict(attn_layer=it.ignore_layer("cbam-ign1(0.5)"))).eval()
    tm.load_state_dict(it.ignore_attn_to_timm(ours.state_dict()))   # strict
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(tm(x), ours(x), rtol=1e-5, atol=1e-5)
    back = it.timm_to_ignore_attn(tm.state_dict())
    assert back.keys() == ours.state_dict().keys()


def test_timm_seresnet50_has_our_structure_up_to_the_hidden_width():
    theirs = timm.create_model("seresnet50").state_dict()
    ours = timm.create_model("resnet50", block_args=dict(attn_layer=it.ignore_layer("se"))).state_dict()
    assert list(theirs) == list(ours)                                   # same keys, same order
    differ = {k for k in theirs if theirs[k].shape != ours[k].shape}
    assert differ and all(".se." in k for k in differ)
    assert {k.split(".se.")[1] for k in differ} == {"fc1.weight", "fc1.bias", "fc2.weight"}
    for k in differ:                                                     # timm: C/16 (1x1 conv); authors: C // 8
        if k.endswith("fc1.weight"):
            c = ours[k].shape[1]
            assert tuple(theirs[k].shape) == (c // 16, c, 1, 1) and tuple(ours[k].shape) == (c // 8, c)


def test_timm_seresnet50_weights_run_in_our_block_at_r16():
    torch.manual_seed(2)
    se = perturb_bn_(timm.create_model("seresnet50", num_classes=10)).eval()
    ours = timm.create_model("resnet50", num_classes=10, block_args=dict(attn_layer=it.ignore_layer("se", reduction=16))).eval()
    ours.load_state_dict(it.ignore_attn_to_timm(it.timm_to_ignore_attn(se.state_dict())))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(ours(x), se(x), rtol=1e-5, atol=1e-5)
    fc1 = [b.se.fc1 for b in se.modules() if isinstance(b, Bottleneck)]
    assert all(f.bias.abs().sum() > 0 for f in fc1)                   # timm: PyTorch's default bias init, not zeros


def test_reinit_undoes_timms_conv_init_in_cbam():
    std = lambda m: torch.cat([b.spatial.conv.weight.flatten() for b in m.modules() if hasattr(b, "spatial")]).std().item()
    torch.manual_seed(3)
    raw = timm.create_model("resnet50", block_args=dict(attn_layer=it.ignore_layer("cbam")))
    assert abs(std(raw) - (2 / 49) ** 0.5) < 0.02                       # timm's He-normal fan-out
    assert abs(std(it.create_model("resnet50", "cbam")) - (2 / 98) ** 0.5) < 0.02   # the authors' fan-in
    fcs = [b.channel.fc1 for b in it.create_model("resnet18", "cbam", init="authors").modules() if hasattr(b, "channel")]
    assert all(f.bias.abs().sum() == 0 for f in fcs) and abs(torch.cat([f.weight.flatten() for f in fcs]).std() - 0.01) < 0.002


def test_layer_factory_checks_and_travels():
    layer = it.ignore_layer("cbam-ign1(0.8)", reduction=4, kernel_size=3)
    again = pickle.loads(pickle.dumps(layer))
    assert repr(again) == repr(layer) == "ignore_layer('cbam-ign1(0.8)', reduction=4, init='authors', kernel_size=3)"
    block = again(32, dtype=torch.float64)
    assert block.reduction == 4 and block.kernel_size == 3 and block.channel.fc1.weight.dtype == torch.float64
    for bad, contains in ((lambda: it.ignore_layer("mmtm"), "fuses two streams"),
                          (lambda: it.ignore_layer("se-ign9"), "unknown flip"),
                          (lambda: it.ignore_layer("se", init="xavier"), "unknown init"),
                          (lambda: it.ignore_layer("se")(64, rd_ratio=0.25), "ResNet family"),
                          (lambda: it.create_model("vit_tiny_patch16_224", "se"), "takes no block_args")):
        with pytest.raises((ValueError, TypeError)) as e: bad()
        assert contains in str(e.value)


def test_registered_names_follow_timm_and_leave_its_registry_intact(caplog):
    names = set(it.VARIANTS)
    assert len(names) == 12 and {"resnet50_se_ign3", "resnet50_cbam_ign1_050", "resnet50_se"} <= names
    assert set(timm.list_models("resnet50_*_ign*")) == {n for n in names if "ign" in n}
    assert {"resnet50", "seresnet50", "vit_base_patch16_224"} <= set(timm.list_models())
    assert not set(timm.list_pretrained()) & names
    assert it.register_variants() == []
    with caplog.at_level(logging.WARNING, logger="timm"):
        m = timm.create_model("resnet50_se_ign1_080", num_classes=7)
    assert not [r for r in caplog.records if "pretrained" in r.getMessage().lower()]   # timm found our pretrained_cfg
    assert m.pretrained_cfg["architecture"] == "resnet50_se_ign1_080" and m.pretrained_cfg["input_size"] == (3, 224, 224)
    assert {str(b.spec) for b in m.modules() if isinstance(b, AttentionBlock)} == {"se-ign1(0.8)"}
    assert m.fc.out_features == 7 and getattr(it, "resnet50_se_ign1_080") is timm.models.model_entrypoint("resnet50_se_ign1_080")
    with pytest.raises(ValueError, match="no weights are published"): timm.create_model("resnet50_se_ign3", pretrained=True)


def test_weights_round_trip_through_timm_loaders(tmp_path):
    "A registered model saved as .safetensors loads back via timm's checkpoint_path and via pretrained_cfg_overlay."
    st = pytest.importorskip("safetensors.torch")
    m = perturb_bn_(timm.create_model("resnet50_se_ign3", num_classes=10)).eval()
    st.save_file(m.state_dict(), str(tmp_path / "model.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    a = timm.create_model("resnet50_se_ign3", num_classes=10, checkpoint_path=str(tmp_path / "model.safetensors")).eval()
    b = timm.create_model("resnet50_se_ign3", num_classes=10, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"), num_classes=10)).eval()
    c = it.create_model("resnet50", "se-ign3", num_classes=10, checkpoint_path=tmp_path / "model.safetensors").eval()
    with torch.no_grad():
        ref = m(x)
        for other in (a, b, c): assert torch.equal(other(x), ref)


def test_pretrained_backbone_keeps_attention_fresh(tmp_path):
    plain = timm.create_model("resnet18", num_classes=1000)
    torch.save(plain.state_dict(), tmp_path / "resnet18.pth")
    m = it.create_model("resnet18", "se-ign2", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "resnet18.pth")))
    own = m.state_dict()
    assert all(torch.equal(own[k], v) for k, v in plain.state_dict().items())     # every backbone tensor, classifier too
    assert all(b.fc1.bias.abs().sum() == 0 for b in m.modules() if isinstance(b, AttentionBlock))
    with pytest.raises(ValueError, match="do not fit the backbone"): it.load_backbone_(m, timm.create_model("resnet50").state_dict())
