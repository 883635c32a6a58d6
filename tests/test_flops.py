"ignore_attn.flops: torch's FlopCounterMode against an independent count by forward hooks."
from __future__ import annotations
import math

import pytest
import torch
import torch.nn as nn

from ignore_attn.attention import AttentionBlock
from ignore_attn.flops import attention_paths, count_madds
from ignore_attn.models import get_model

torch.set_num_threads(1)  # the suite shares a small machine


def hook_count(model: nn.Module, inputs: tuple) -> dict[str, int]:
    "Multiply-adds of every conv (any rank) and Linear module by forward hooks, split by attention: no FlopCounterMode."
    inside = {id(m) for b in model.modules() if isinstance(b, AttentionBlock) for m in b.modules()}
    out = {"backbone": 0, "attention": 0}
    def hook(m, args, y):
        per = m.in_channels // m.groups * math.prod(m.kernel_size) if isinstance(m, nn.modules.conv._ConvNd) else m.in_features
        out["attention" if id(m) in inside else "backbone"] += y.numel() * per
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    with torch.no_grad(): model.eval()(*inputs)
    for h in hs: h.remove()
    return out


@pytest.mark.parametrize("arch, size", [("resnet20-cifar", 32), ("densenet40-cifar", 32), ("resnet50", 64)])
@pytest.mark.parametrize("attention", ["standard", "se", "se-ign3", "cbam-ign1(0.5)"])
def test_equals_a_hook_count_on_the_image_models(arch, size, attention):
    m = get_model(arch, 10, attention)
    x = torch.zeros(1, 3, size, size)
    hooks, got = hook_count(m, (x,)), count_madds(m, x)
    assert (got["backbone"], got["attention"]) == (hooks["backbone"], hooks["attention"])
    assert got["total"] == got["backbone"] + got["attention"] and (got["attention"] > 0) == (attention != "standard")


def test_ntu_model_with_tuple_input():
    m = get_model("mmtm-fusion-tiny", 60, "mmtm-ign1(0.5)").train()
    sample = (torch.zeros(2, 3, 2, 32, 32), torch.zeros(2, 3, 16, 25, 2))
    got = count_madds(m, sample)
    assert m.training                                                        # the mode is restored
    assert attention_paths(m) == ["fusion.layer2", "fusion.layer3", "fusion.layer4"]
    by_hand = sum(2 * 2 * b.fc_squeeze.out_features * (b.dim_a + b.dim_b) for b in m.fusion.values())   # batch 2
    assert got["attention"] == by_hand
    assert (got["backbone"], got["attention"]) == tuple(hook_count(m, sample).values())
    plain = count_madds(get_model("mmtm-fusion-tiny", 60, "standard"), sample)
    assert plain == {"backbone": got["backbone"], "attention": 0, "total": got["backbone"]}   # fusion adds only itself


def test_timm_model_counts_like_ours():
    timm = pytest.importorskip("timm", reason='timm is an optional extra (pip install "ignore-attn[timm]")')
    from ignore_attn.timm import ignore_layer
    m = timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=ignore_layer("cbam-ign3")))
    x = torch.zeros(1, 3, 64, 64)
    hooks, got = hook_count(m, (x,)), count_madds(m, x)
    assert got["attention"] > 0 and (got["backbone"], got["attention"]) == (hooks["backbone"], hooks["attention"])


def test_a_lone_block_is_all_attention_and_nesting_counts_once():
    from ignore_attn.attention import SE
    se = SE(64, 8, spec="se-ign3")
    assert attention_paths(se) == [""]
    assert count_madds(se, torch.zeros(3, 64, 5, 5)) == {"backbone": 0, "attention": 3 * 2 * 64 * 8, "total": 3 * 2 * 64 * 8}
    outer = nn.Sequential(nn.Conv2d(3, 64, 1), se)
    assert attention_paths(outer) == ["1"]
    assert count_madds(outer, torch.zeros(1, 3, 5, 5)) == {"backbone": 25 * 3 * 64, "attention": 2 * 64 * 8,
                                                           "total": 25 * 3 * 64 + 2 * 64 * 8}
