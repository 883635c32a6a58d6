"""The blocks and every registered model in PyTorch's graph tools: torch.fx.symbolic_trace, torchvision's
create_feature_extractor and torch.export give the eager results (issue 20)."""
from __future__ import annotations
import pytest
import torch
import torch.fx
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from ignore_attn.flip import all_specs
from ignore_attn.attention import SE, CBAM, fx_tracing
from ignore_attn.mmtm import MMTM
from ignore_attn.registry import get_model, is_ntu_model, list_models

torch.set_num_threads(1)

FAMILIES = {"image": ["standard", "se-ign3", "cbam-ign1(0.5)", "se-const", "cbam-const"],
            "fusion": ["standard", "mmtm-ign2"], "stream": ["standard"]}

def family(name: str) -> str:
    if not is_ntu_model(name): return "image"
    return "fusion" if name.startswith("mmtm-fusion") else "stream"

def inputs(name: str) -> tuple[torch.Tensor, ...]:
    "A small batch the model takes: 2 images of 32 x 32, or 2 NTU (clip, skeleton) pairs of 2 RGB frames."
    g = torch.Generator().manual_seed(0)
    if not is_ntu_model(name): return (torch.randn(2, 3, 32, 32, generator=g),)
    frames = 16 if name.endswith("-tiny") else 32
    return torch.randn(2, 3, 2, 32, 32, generator=g), torch.randn(2, 3, frames, 25, 2, generator=g)

CASES = [(name, spec) for name in list_models("all") for spec in FAMILIES[family(name)]]

def test_cases_cover_every_model_and_kind():
    assert {n for n, _ in CASES} == set(list_models("all"))
    assert {s.split("-")[0] for _, s in CASES} == {"standard", "se", "cbam", "mmtm"}

@pytest.mark.parametrize("name,spec", CASES)
def test_symbolic_trace_matches_eager(name, spec):
    torch.manual_seed(0)
    model = get_model(name, attention=spec).eval()
    traced = torch.fx.symbolic_trace(model)
    x = inputs(name)
    with torch.no_grad(): assert torch.equal(traced(*x), model(*x))

# Models small enough to run every feature: one of each architecture family.
FEATURE_CASES = [("resnet20-cifar", s) for s in FAMILIES["image"][1:]] + [("densenet40-cifar", "se-ign2"),
                 ("densenet40-cifar", "cbam"), ("mmtm-fusion-tiny", "mmtm-ign3"), ("mmtm-fusion-tiny", "mmtm(0.8)"),
                 ("ntu-rgb-tiny", "standard"), ("ntu-skeleton-tiny", "standard")]

@pytest.mark.parametrize("name,spec", FEATURE_CASES)
def test_feature_extractor_matches_eager(name, spec):
    "Every conv and linear layer run once, read through create_feature_extractor, equals its eager output (hooks)."
    torch.manual_seed(0)
    model = get_model(name, attention=spec).eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    seen, hooks = {}, []
    for n, m in layers.items():
        hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: seen.setdefault(n, []).append(o)))
    x = inputs(name)
    with torch.no_grad(): out = model(*x)
    for h in hooks: h.remove()
    once = [n for n, outs in seen.items() if len(outs) == 1]   # CBAM's shared MLP runs twice: no single feature
    assert len(once) > 10
    extractor = create_feature_extractor(model, return_nodes=once)
    with torch.no_grad(): feats = extractor(*x)
    assert sorted(feats) == sorted(once)
    for n in once: assert torch.equal(feats[n], seen[n][0]), n
    with torch.no_grad(): assert torch.equal(torch.fx.symbolic_trace(model)(*x), out)

@pytest.mark.parametrize("spec", all_specs("se", extras=True, controls=True) + ["se(0.8)"])
def test_se_graph_is_rank_generic(spec):
    "One SE graph, traced on images, serves (N, C, L) and (N, C, T, H, W) too: no branch on the rank was recorded."
    block = SE(8, 2, spec=spec).eval()
    graph = torch.fx.symbolic_trace(block)
    for shape in ((3, 8, 5, 5), (3, 8, 7), (3, 8, 2, 3, 4)):
        x = torch.randn(shape)
        assert torch.equal(graph(x), block(x))

@pytest.mark.parametrize("spec", all_specs("cbam", extras=True, controls=True))
def test_cbam_traces(spec):
    block = CBAM(8, 2, kernel_size=3, spec=spec).eval()
    x = torch.randn(2, 8, 5, 6)
    assert torch.equal(torch.fx.symbolic_trace(block)(x), block(x))

@pytest.mark.parametrize("spec", all_specs("mmtm", extras=True))
def test_mmtm_traces_for_any_rank(spec):
    block = MMTM(6, 4, spec=spec).eval()
    graph = torch.fx.symbolic_trace(block)
    for a, b in (((2, 6, 3, 5, 5), (2, 4, 7)), ((2, 6), (2, 4, 3, 3))):
        a, b = torch.randn(a), torch.randn(b)
        for got, want in zip(graph(a, b), block(a, b)): assert torch.equal(got, want)

def test_eager_callers_keep_the_checks():
    "The checks step aside only while FX traces; eager calls still get the one-line errors."
    assert not fx_tracing()
    with pytest.raises(ValueError, match="expects input of shape"): SE(8, 2)(torch.randn(2, 4, 3, 3))
    with pytest.raises(TypeError, match="floating-point"): CBAM(8, 2)(torch.zeros(2, 8, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="same batch size"): MMTM(6, 4)(torch.randn(2, 6, 3), torch.randn(3, 4, 3))
    net = get_model("ntu-rgb-tiny")
    with pytest.raises(ValueError, match="RGB stream expects clips"): net(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 25, 2))
    net = get_model("ntu-skeleton-tiny")
    with pytest.raises(ValueError, match="HCN expects skeletons"): net(torch.randn(2, 3, 2, 32, 32), torch.randn(2, 3, 8, 25, 2))

@pytest.mark.parametrize("block,args", [(SE(8, 2, spec="se-ign3"), ((2, 8, 5, 5),)),
                                        (CBAM(8, 2, kernel_size=3, spec="cbam-ign1(0.5)"), ((2, 8, 5, 6),)),
                                        (CBAM(8, 2, kernel_size=3, spec="cbam-const"), ((2, 8, 5, 6),)),
                                        (MMTM(6, 4, spec="mmtm-ign2"), ((2, 6, 3, 4), (2, 4, 5)))])
def test_torch_export_matches_eager(block, args):
    "torch.export, what the attention chapter offers in place of torch.jit.script, gives the eager result."
    x = tuple(torch.randn(s) for s in args)
    exported = torch.export.export(block.eval(), x)
    got, want = exported.module()(*x), block(*x)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
