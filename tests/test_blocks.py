"Tests of the attention blocks (SE, CBAM, MMTM) against the paper's equations, written out independently here."
from __future__ import annotations
import copy
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
from fastcore.test import test_fail as assert_fails  # renamed so pytest does not collect it

from ignore_attn.flip import all_specs
from ignore_attn.attention import (AttentionBlock, SE, CBAM, make_attention, init_attention_, count_attention,
                                   record_masks)
from ignore_attn.mmtm import MMTM

torch.set_num_threads(1)

# --- The equations, written out without ignore_attn.flip -------------------------------------------------------

def sigmoid(z: torch.Tensor) -> torch.Tensor:
    "Logistic function from its definition."
    return 1 / (1 + torch.exp(-z))

EQUATIONS = {                      # spec suffix -> mask from the branch logits z (paper Eq. 1, 3-5; authors' extras)
    "": sigmoid,
    "(0.8)": lambda z: 0.8 * sigmoid(z),
    "-ign1(1.0)": lambda z: 1 - sigmoid(z),
    "-ign1(0.8)": lambda z: 1 - 0.8 * sigmoid(z),
    "-ign1(0.5)": lambda z: 1 - 0.5 * sigmoid(z),
    "-ign1(0.0)": lambda z: torch.ones_like(z),
    "-ign2": lambda z: sigmoid(1 / (sigmoid(z) + 1e-6)),
    "-ign3": lambda z: sigmoid(-z),
    "-exp": lambda z: torch.exp(-torch.clamp(z, min=0)),
    "-sigexp": lambda z: sigmoid(torch.exp(-torch.clamp(z, min=0))),
}
DTYPES = [torch.float32, torch.float64]

def close(dtype: torch.dtype) -> dict:
    "Tolerances for 'exact' agreement: rounding only."
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)

def dense(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    "W x + b written as a sum over the input index."
    return (x[:, None, :] * layer.weight[None]).sum(-1) + layer.bias

def conv_same(maps: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    "Zero-padded 'same' cross-correlation (N, C, H, W) * (1, C, k, k) -> (N, 1, H, W), as a sum of shifted maps."
    k = weight.shape[-1]; p = k // 2
    padded = nn.functional.pad(maps, (p, p, p, p))
    H, W = maps.shape[-2:]
    out = torch.zeros(maps.shape[0], 1, H, W, dtype=maps.dtype)
    for c in range(maps.shape[1]):
        for i in range(k):
            for j in range(k):
                out[:, 0] += weight[0, c, i, j] * padded[:, c, i:i + H, j:j + W]
    return out

def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(*x.shape[:2], -1).mean(-1) if x.ndim > 2 else x

def expand(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return m.reshape(*m.shape, *([1] * (x.ndim - 2)))

def se_by_equation(block: SE, x: torch.Tensor, T) -> torch.Tensor:
    "Eq. 6 with T: x * T(W2 relu(W1 GAP(x) + b1) + b2)."
    z = dense(torch.relu(dense(spatial_mean(x), block.fc1)), block.fc2)
    return x * expand(T(z), x)

def cbam_by_equation(block: CBAM, x: torch.Tensor, T) -> torch.Tensor:
    "Eq. 7 with T on both masks."
    mlp = lambda v: dense(torch.relu(dense(v, block.channel.fc1)), block.channel.fc2)
    z_ch = mlp(x.mean((2, 3))) + mlp(x.amax((2, 3)))
    f_ch = x * T(z_ch)[:, :, None, None]
    maps = torch.stack([f_ch.mean(1), f_ch.amax(1)], 1)
    return f_ch * T(conv_same(maps, block.spatial.conv.weight))

def mmtm_by_equation(block: MMTM, a: torch.Tensor, b: torch.Tensor, T):
    "MMTM with T on each modality's excitation."
    z = torch.relu(dense(torch.cat([spatial_mean(a), spatial_mean(b)], 1), block.fc_squeeze))
    return a * expand(T(dense(z, block.fc_a)), a), b * expand(T(dense(z, block.fc_b)), b)

# --- Exact agreement with the equations, every kind x flip, float32 and float64 ---------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", list(EQUATIONS))
def test_se_matches_equation(suffix, dtype):
    torch.manual_seed(0)
    block = SE(24, 4, spec="se" + suffix, init="torch").to(dtype)
    for x in (torch.randn(3, 24, 5, 7, dtype=dtype), torch.randn(2, 24, 3, 4, 4, dtype=dtype), torch.randn(2, 24, 6, dtype=dtype)):
        torch.testing.assert_close(block(x), se_by_equation(block, x, EQUATIONS[suffix]), **close(dtype))

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", list(EQUATIONS))
def test_cbam_matches_equation(suffix, dtype):
    torch.manual_seed(0)
    for k in (7, 3):
        block = CBAM(16, 4, kernel_size=k, spec="cbam" + suffix, init="torch").to(dtype)
        x = torch.randn(3, 16, 6, 9, dtype=dtype)
        torch.testing.assert_close(block(x), cbam_by_equation(block, x, EQUATIONS[suffix]), **close(dtype))

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", list(EQUATIONS))
def test_mmtm_matches_equation(suffix, dtype):
    torch.manual_seed(0)
    block = MMTM(20, 12, spec="mmtm" + suffix, init="torch").to(dtype)
    a, b = torch.randn(3, 20, 5, 5, dtype=dtype), torch.randn(3, 12, 8, 25, dtype=dtype)
    for got, want in zip(block(a, b), mmtm_by_equation(block, a, b, EQUATIONS[suffix])):
        torch.testing.assert_close(got, want, **close(dtype))

def test_se_by_hand():
    "Two channels, one hidden unit, weights and logits (2.5, -2) worked out on paper."
    block = SE(2, 2, spec="se-ign1(0.5)").double()
    with torch.no_grad():
        block.fc1.weight.copy_(torch.tensor([[1.0, -1.0]])); block.fc1.bias.zero_()
        block.fc2.weight.copy_(torch.tensor([[1.0], [-1.0]])); block.fc2.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[-1.0, -3.0], [0.0, 0.0]]]], dtype=torch.float64)
    s = lambda v: 1 / (1 + torch.tensor(-v, dtype=torch.float64).exp())
    mask = torch.stack([1 - 0.5 * s(2.5), 1 - 0.5 * s(-2.0)])
    torch.testing.assert_close(block(x), x * mask[None, :, None, None], rtol=0, atol=1e-15)

# --- Identities: ign1(0) is no attention; ign3 is standard attention with the last layer negated ----------------

def test_ign1_zero_is_identity():
    x, a, b = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 3), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(SE(16, spec="se-ign1(0.0)", init="torch")(x), x)
        assert torch.equal(CBAM(16, spec="cbam-ign1(0.0)", init="torch")(x), x)
        a2, b2 = MMTM(16, 8, spec="mmtm-ign1(0.0)", init="torch")(a, b)
        assert torch.equal(a2, a) and torch.equal(b2, b)

@pytest.mark.parametrize("kind,args,layers", [("se", (32, 4), ["fc2"]),
                                              ("cbam", (32, 4), ["channel.fc2", "spatial.conv"]),
                                              ("mmtm", (24, 12), ["fc_a", "fc_b"])])
def test_ign3_is_standard_with_negated_last_layer(kind, args, layers):
    torch.manual_seed(1)
    cls = {"se": SE, "cbam": CBAM, "mmtm": MMTM}[kind]
    ign3 = cls(*args, spec=f"{kind}-ign3", init="torch").double()
    std = cls(*args, spec=kind).double(); std.load_state_dict(ign3.state_dict())
    with torch.no_grad():
        for name, p in std.named_parameters():
            if name.rsplit(".", 1)[0] in layers: p.neg_()
    inputs = ((torch.randn(3, 24, 4, 4, dtype=torch.float64), torch.randn(3, 12, 5, dtype=torch.float64)) if kind == "mmtm"
              else (torch.randn(3, 32, 6, 6, dtype=torch.float64),))
    out_ign, out_std = ign3(*inputs), std(*inputs)
    torch.testing.assert_close(out_ign, out_std, rtol=1e-12, atol=1e-12)

# --- Masks in [0, 1]; T2 in (sigmoid(1), 1] and finite when the inner mask underflows ---------------------------

SIGMOID_1 = 1 / (1 + torch.exp(torch.tensor(-1.0, dtype=torch.float64))).item()

def masks_of(recorded) -> list[torch.Tensor]:
    return list(recorded.values()) if isinstance(recorded, dict) else [recorded]

def saturated_block(kind: str, spec: str, bias: float) -> tuple[nn.Module, tuple]:
    "A block whose last-layer bias forces every logit to +-`bias`, with its inputs."
    if kind == "se":
        block = SE(16, 4, spec=spec, init="torch"); layers = [block.fc2]; inputs = (torch.randn(2, 16, 3, 3),)
    elif kind == "cbam":
        block = CBAM(16, 4, spec=spec, init="torch"); layers = [block.channel.fc2]; inputs = (torch.randn(2, 16, 5, 5),)
        with torch.no_grad(): block.spatial.conv.weight.fill_(bias / 100)
    else:
        block = MMTM(16, 8, spec=spec, init="torch"); layers = [block.fc_a, block.fc_b]; inputs = (torch.randn(2, 16, 3), torch.randn(2, 8, 2, 2))
    with torch.no_grad():
        for layer in layers: layer.bias.fill_(bias)
    return block, tuple(t.abs() + 0.1 for t in inputs)   # positive inputs so the spatial logits saturate too

@pytest.mark.parametrize("kind", ["se", "cbam", "mmtm"])
@pytest.mark.parametrize("bias", [-1e4, -50.0, 0.0, 50.0, 1e4])
def test_masks_in_unit_interval_and_t2_range(kind, bias):
    for spec in all_specs(kind, extras=True) + [f"{kind}(0.8)", f"{kind}-ign1(0.0)"]:
        block, inputs = saturated_block(kind, spec, bias)
        inputs = tuple(t.requires_grad_() for t in inputs)
        with record_masks(block) as rec:
            out = block(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        for m in masks_of(rec[""]):
            assert ((m >= 0) & (m <= 1)).all(), spec
            if spec.endswith("ign2"):
                assert (m > SIGMOID_1 - 1e-6).all() and torch.isfinite(m).all(), spec
        grads = torch.autograd.grad(sum(o.sum() for o in out), [*inputs, *block.parameters()])
        assert all(torch.isfinite(t).all() for t in (*out, *grads)), (spec, bias)

def test_t2_hits_both_ends_of_its_range():
    lo, _ = saturated_block("se", "se-ign2", 1e4)       # sigmoid(z) = 1 -> T2 = sigmoid(1 / (1 + eps))
    hi, _ = saturated_block("se", "se-ign2", -1e4)      # sigmoid(z) underflows to 0 -> T2 = sigmoid(1e6) = 1
    x = torch.rand(2, 16, 3, 3)
    for block, want in ((lo, SIGMOID_1), (hi, 1.0)):
        with record_masks(block) as rec: block(x)
        torch.testing.assert_close(rec[""], torch.full((2, 16), want), rtol=0, atol=1e-6)

# --- Property tests: shapes, batch sizes, reductions, dtypes; forward and backward ------------------------------

FLOAT_DTYPES = st.sampled_from([torch.float32, torch.bfloat16])

def check_forward_backward(block: nn.Module, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    "Shapes and dtypes kept, masks in [0, 1], finite gradients for inputs and parameters."
    with record_masks(block) as rec:
        out = block(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    for o, i in zip(out, inputs):
        assert o.shape == i.shape and o.dtype == dtype
    for m in masks_of(rec[""]):
        assert ((m >= 0) & (m <= 1)).all() and not m.requires_grad
    sum(o.float().square().mean() for o in out).backward()
    for t in (*inputs, *block.parameters()):
        assert t.grad is not None and torch.isfinite(t.grad).all()

@settings(max_examples=25, deadline=None)
@given(spec=st.sampled_from(all_specs("se", extras=True, controls=True)), n=st.integers(1, 4),
       r=st.sampled_from([1, 2, 4, 8, 16]), mult=st.integers(1, 3), spatial=st.lists(st.integers(1, 5), min_size=1, max_size=3), dtype=FLOAT_DTYPES)
def test_se_properties(spec, n, r, mult, spatial, dtype):
    block = SE(r * mult, r, spec=spec, init="torch").to(dtype)
    check_forward_backward(block, (torch.randn(n, r * mult, *spatial, dtype=dtype, requires_grad=True),), dtype)

@settings(max_examples=25, deadline=None)
@given(spec=st.sampled_from(all_specs("cbam", extras=True, controls=True)), n=st.integers(1, 4),
       r=st.sampled_from([1, 2, 4, 8]), mult=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8), k=st.sampled_from([1, 3, 7]), dtype=FLOAT_DTYPES)
def test_cbam_properties(spec, n, r, mult, h, w, k, dtype):
    block = CBAM(r * mult, r, kernel_size=k, spec=spec, init="torch").to(dtype)
    check_forward_backward(block, (torch.randn(n, r * mult, h, w, dtype=dtype, requires_grad=True),), dtype)

@settings(max_examples=25, deadline=None)
@given(spec=st.sampled_from(all_specs("mmtm", extras=True)), n=st.integers(1, 4), dim_a=st.integers(1, 32), dim_b=st.integers(1, 32),
       ratio=st.sampled_from([1, 2, 4, 8]), axes_a=st.lists(st.integers(1, 4), max_size=3),
       axes_b=st.lists(st.integers(1, 4), max_size=3), dtype=FLOAT_DTYPES)
def test_mmtm_properties(spec, n, dim_a, dim_b, ratio, axes_a, axes_b, dtype):
    ratio = min(ratio, 2 * (dim_a + dim_b))
    block = MMTM(dim_a, dim_b, ratio, spec=spec, init="torch").to(dtype)
    inputs = (torch.randn(n, dim_a, *axes_a, dtype=dtype, requires_grad=True),
              torch.randn(n, dim_b, *axes_b, dtype=dtype, requires_grad=True))
    check_forward_backward(block, inputs, dtype)

# --- The constant-mask control: no branch, no parameters, the residual branch scaled by sigma(0) per mask ---------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,shape,scale", [("se", (3, 24, 5, 7), 0.5), ("se", (2, 24, 6), 0.5),
                                              ("cbam", (3, 24, 6, 9), 0.25)])
def test_const_control_scales_and_records(kind, shape, scale, dtype):
    block = make_attention(f"{kind}-const", 24, 4).to(dtype)
    assert list(block.parameters()) == [] and block.state_dict() == {}
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    with record_masks(block) as rec: y = block(x)
    torch.testing.assert_close(y, scale * x, rtol=0, atol=0)
    for m in masks_of(rec[""]):
        assert m.dtype == dtype and torch.equal(m, torch.full_like(m, 0.5))
    g = torch.randn_like(x)
    gx, = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, scale * g, rtol=0, atol=0)

def test_const_control_is_standard_with_halved_last_bn():
    "resnet14-cifar with se-const: the standard model's weights, each residual branch's bn2 scaled by 0.5."
    from ignore_attn.models import get_model
    torch.manual_seed(3); standard = get_model("resnet14-cifar", 10, "standard").double().eval()
    torch.manual_seed(3); const = get_model("resnet14-cifar", 10, "se-const").double().eval()
    assert count_attention(const) == 6 and count_attention(standard) == 0
    assert sum(p.numel() for p in const.parameters()) == sum(p.numel() for p in standard.parameters())
    sd = standard.state_dict()
    assert list(const.state_dict()) == list(sd) and all(torch.equal(v, sd[k]) for k, v in const.state_dict().items())
    with torch.no_grad():          # BN in eval mode is affine: 0.5 * bn2(z) is bn2 with weight and bias halved
        for name, m in standard.named_modules():
            if name.endswith("bn2"): m.weight.mul_(0.5); m.bias.mul_(0.5)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(const(x), standard(x), rtol=1e-12, atol=1e-12)

# --- Section 4.4: for ign1(1.0) the branch's gradient flips, the main branch's does not -------------------------

def linear_loss_grads(block: nn.Module, conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> dict:
    "Gradients of L = <g, block(conv(x))> for the block's parameters and the conv (the main branch)."
    block.zero_grad(); conv.zero_grad()
    (g * block(conv(x))).sum().backward()
    return {**{n: p.grad.clone() for n, p in block.named_parameters()}, "conv": conv.weight.grad.clone()}

def test_se_gradient_flips_only_in_the_branch():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1).double()
    x, g = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 16, 8, 8, dtype=torch.float64)
    att = SE(16, 4, spec="se", init="torch").double()
    ign = SE(16, 4, spec="se-ign1(1.0)").double(); ign.load_state_dict(att.state_dict())
    ga, gi = linear_loss_grads(att, conv, x, g), linear_loss_grads(ign, conv, x, g)
    for name in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]:
        torch.testing.assert_close(gi[name], -ga[name], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(gi["conv"], -ga["conv"], rtol=1e-3, atol=1e-6)
    # the features' gradient = direct part g * m (not flipped: the two add up to g) + branch part (flipped)
    feats = conv(x).detach()
    def feature_grad(block):
        f = feats.clone().requires_grad_()
        with record_masks(block) as rec: out = block(f)
        grad, = torch.autograd.grad((g * out).sum(), f)
        direct = g * rec[""][:, :, None, None]
        return direct, grad - direct
    (da, ba), (di, bi) = feature_grad(att), feature_grad(ign)
    torch.testing.assert_close(bi, -ba, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(da + di, g, rtol=1e-12, atol=1e-12)

def test_cbam_gradient_flips_stage_by_stage():
    "Each CBAM mask flips its own branch's gradient for the same stage input and the same dL/dmask."
    torch.manual_seed(0)
    att = CBAM(16, 4, spec="cbam", init="torch").double()
    ign = CBAM(16, 4, spec="cbam-ign1(1.0)").double(); ign.load_state_dict(att.state_dict())
    x = torch.randn(3, 16, 6, 6, dtype=torch.float64)
    g_ch, g_sp = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 1, 6, 6, dtype=torch.float64)
    def stage_grads(block):
        from ignore_attn.flip import flip_mask
        block.zero_grad()
        loss = (g_ch * flip_mask(block.channel(x), block.spec)).sum() + (g_sp * flip_mask(block.spatial(x), block.spec)).sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in block.named_parameters()}
    ga, gi = stage_grads(att), stage_grads(ign)
    for name in ga: torch.testing.assert_close(gi[name], -ga[name], rtol=1e-10, atol=1e-12)

def test_mmtm_gradient_flips_only_in_the_branch():
    torch.manual_seed(0)
    a, b = torch.randn(3, 24, 5, 5, dtype=torch.float64), torch.randn(3, 12, 6, 4, dtype=torch.float64)
    ga_, gb_ = torch.randn_like(a), torch.randn_like(b)
    att = MMTM(24, 12, spec="mmtm", init="torch").double()
    ign = MMTM(24, 12, spec="mmtm-ign1(1.0)").double(); ign.load_state_dict(att.state_dict())
    def grads(block):
        block.zero_grad()
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        a2, b2 = block(a_, b_)
        ((ga_ * a2).sum() + (gb_ * b2).sum()).backward()
        return {**{n: p.grad.clone() for n, p in block.named_parameters()}, "a": a_.grad, "b": b_.grad}
    g_att, g_ign = grads(att), grads(ign)
    for name in ["fc_squeeze.weight", "fc_squeeze.bias", "fc_a.weight", "fc_a.bias", "fc_b.weight", "fc_b.bias"]:
        torch.testing.assert_close(g_ign[name], -g_att[name], rtol=1e-10, atol=1e-12)
    for name in ["a", "b"]:
        assert not torch.allclose(g_ign[name], -g_att[name], rtol=1e-3, atol=1e-6)

# --- Mask recording ---------------------------------------------------------------------------------------------

class Toy(nn.Module):
    "SE and CBAM in a sequence, MMTM fusing two streams, nested one level."
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SE(16, spec="se-ign3"), CBAM(16, spec="cbam-ign1(0.5)"))
        self.fuse = MMTM(16, 8, spec="mmtm-ign2")
    def forward(self, x, s):
        return self.fuse(self.body(x), s)

def test_record_masks_returns_masks_without_changing_outputs_or_gradients():
    torch.manual_seed(0)
    net = Toy()
    x, s = torch.randn(2, 3, 6, 6), torch.randn(2, 8, 5)
    out = net(x, s)
    grads = torch.autograd.grad(sum(o.sum() for o in out), list(net.parameters()))
    with record_masks(net) as masks:
        out_rec = net(x, s)
        grads_rec = torch.autograd.grad(sum(o.sum() for o in out_rec), list(net.parameters()))
    for o, r in zip(out, out_rec): assert torch.equal(o, r)
    for o, r in zip(grads, grads_rec): assert torch.equal(o, r)
    assert list(masks) == ["body.1", "body.2", "fuse"]
    assert masks["body.1"].shape == (2, 16)
    assert {k: v.shape for k, v in masks["body.2"].items()} == {"channel": (2, 16), "spatial": (2, 1, 6, 6)}
    assert {k: v.shape for k, v in masks["fuse"].items()} == {"a": (2, 16), "b": (2, 8)}
    for m in (masks["body.1"], *masks["body.2"].values(), *masks["fuse"].values()):
        assert not m.requires_grad and m.grad_fn is None
    for block in (net.body[1], net.body[2], net.fuse):
        assert block.record is False and block.last_mask is None
    net(x, s)
    assert all(b.last_mask is None for b in (net.body[1], net.body[2], net.fuse))   # nothing kept when not recording

def test_record_masks_keeps_the_last_pass_and_restores_flags_on_error():
    block = SE(8, 4, init="torch")
    block.record = True                       # a flag set by the user is restored, not reset to False
    x1, x2 = torch.randn(1, 8, 2, 2), torch.randn(3, 8, 2, 2)
    with record_masks(block) as masks:
        block(x1); block(x2)
    assert masks[""].shape == (3, 8)
    assert block.record is True and block.last_mask is None
    with pytest.raises(ValueError):
        with record_masks(nn.Sequential(block)) as masks:
            block(torch.randn(1, 4, 2, 2))
    assert block.record is True and block._forward_hooks == {}

def test_recorded_mask_matches_applied_mask():
    block = SE(8, 2, spec="se-ign1(0.8)", init="torch").double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    with record_masks(block) as masks: y = block(x)
    torch.testing.assert_close(y, x * masks[""][:, :, None, None])

# --- Construction, init, make_attention, count_attention, repr ---------------------------------------------------

def test_authors_init():
    torch.manual_seed(0)
    se, cbam, mmtm = SE(512, 2), CBAM(512, 2), MMTM(512, 256)
    for layer in (se.fc1, se.fc2, cbam.channel.fc1, cbam.channel.fc2, mmtm.fc_squeeze, mmtm.fc_a, mmtm.fc_b):
        assert abs(layer.weight.std().item() - 0.01) < 1e-3 and abs(layer.weight.mean().item()) < 1e-3
        assert torch.count_nonzero(layer.bias) == 0
    assert abs(cbam.spatial.conv.weight.std().item() - (2 / 98) ** 0.5) < 0.05
    torch_init = SE(512, 2, init="torch")
    assert torch.count_nonzero(torch_init.fc1.bias) > 0 and torch_init.fc1.weight.std().item() > 0.02

def test_init_attention_on_any_module():
    m = nn.Sequential(nn.Linear(256, 256), nn.Conv1d(4, 4, 3))
    assert init_attention_(m) is m
    assert torch.count_nonzero(m[0].bias) == 0 and torch.count_nonzero(m[1].bias) == 0
    assert_fails(lambda: init_attention_(m, "he"), contains="unknown init 'he'")

def test_make_attention_and_count():
    assert isinstance(make_attention("standard", 16), nn.Identity)
    se, cbam = make_attention("se-ign1(0.5)", 64, 16), make_attention("cbam-ign3", 32, kernel_size=3, init="torch")
    assert type(se) is SE and se.fc1.out_features == 4 and str(se.spec) == "se-ign1(0.5)"
    assert type(cbam) is CBAM and cbam.spatial.conv.kernel_size == (3, 3) and cbam.spatial.conv.padding == (1, 1)
    assert_fails(lambda: make_attention("mmtm", 16), contains="ignore_attn.mmtm.MMTM")
    assert count_attention(Toy()) == 3 and count_attention(nn.Sequential(nn.ReLU())) == 0
    assert all(isinstance(b, AttentionBlock) for b in (se, cbam, MMTM(4, 4)))

@pytest.mark.parametrize("kind", ["se", "cbam", "mmtm"])
def test_state_dict_is_the_same_for_every_variant(kind):
    "Checkpoints move between variants of one kind: the spec changes the reading of the branch, not its weights."
    build = (lambda s: MMTM(16, 8, spec=s)) if kind == "mmtm" else (lambda s: make_attention(s, 16))
    keys = {tuple(build(s).state_dict()) for s in all_specs(kind, extras=True)}
    assert len(keys) == 1

def test_repr_shows_spec_and_deepcopy_works():
    assert "spec=se-ign1(0.5)" in repr(SE(16, spec="se-ign1(0.5)"))
    assert "kernel_size=7, spec=cbam-ign3" in repr(CBAM(16, spec="cbam-ign3"))
    assert "ratio=4, spec=mmtm-ign2" in repr(MMTM(16, 8, spec="mmtm-ign2"))
    block = CBAM(16, spec="cbam-ign2")
    clone = copy.deepcopy(block)
    x = torch.randn(1, 16, 4, 4)
    assert torch.equal(clone(x), block(x)) and clone.spec == block.spec

# --- Bad input: each error says what was expected ---------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: SE(16, spec="se-ign9"), "valid attention specs"),
    (lambda: SE(16, spec="attention"), "valid attention specs"),
    (lambda: CBAM(16, spec="cbam-ign1(1.2)"), "alpha must lie in [0, 1]"),
    (lambda: SE(16, spec="se-ign1(-0.5)"), "alpha must lie in [0, 1]"),
    (lambda: SE(16, spec="se-ign2(0.5)"), "alpha is only defined"),
    (lambda: MMTM(8, 8, spec="mmtm-ign3(0.5)"), "alpha is only defined"),
    (lambda: SE(16, spec="cbam-ign1"), "SE implements 'se' attention but got spec 'cbam-ign1(1.0)'"),
    (lambda: CBAM(16, spec="mmtm"), "use a cbam spec"),
    (lambda: MMTM(8, 8, spec="se"), "use a mmtm spec"),
    (lambda: CBAM(16, spec="standard"), "make_attention('standard', channels)"),
    (lambda: make_attention("se-foo", 16), "valid attention specs"),
    (lambda: SE(4), "channels (4) must be >= reduction (8); use a smaller reduction"),
    (lambda: CBAM(6, 16), "channels (6) must be >= reduction (16)"),
    (lambda: make_attention("se", 4), "channels (4) must be >= reduction (8)"),
    (lambda: SE(-3), "channels must be a positive int"),
    (lambda: SE(16, 0), "reduction must be a positive int"),
    (lambda: SE(16.0), "channels must be a positive int"),
    (lambda: CBAM(16, kernel_size=6), "positive odd int"),
    (lambda: SE(16, init="kaiming"), "unknown init 'kaiming'"),
    (lambda: MMTM(0, 4), "dim_a must be a positive int"),
    (lambda: MMTM(2, 1, ratio=7), "use a ratio of at most 6"),
    (lambda: AttentionBlock("se"), "base class"),
])
def test_bad_construction(make, message):
    assert_fails(make, contains=message)

@pytest.mark.parametrize("block,inputs,message", [
    (SE(16), (torch.randn(2, 16),), "SE expects input of shape (N, 16, *spatial) (rank >= 3), got shape (2, 16)"),
    (SE(16), (torch.randn(2, 8, 4, 4),), "SE expects input of shape (N, 16, *spatial) with 16 channels on axis 1, got shape (2, 8, 4, 4)"),
    (CBAM(16), (torch.randn(2, 16, 4),), "CBAM expects input of shape (N, 16, H, W) (rank 4), got shape (2, 16, 4)"),
    (CBAM(16), (torch.randn(2, 16, 2, 4, 4),), "(rank 4), got shape (2, 16, 2, 4, 4)"),
    (CBAM(16), (torch.randn(2, 32, 4, 4),), "with 16 channels on axis 1"),
    (SE(16), (torch.zeros(2, 16, 4, 4, dtype=torch.int64),), "floating-point"),
    (SE(16), ([[1.0]],), "expects a tensor"),
    (MMTM(8, 4), (torch.randn(2, 8, 3), torch.randn(5, 4, 3)), "same batch size on both streams"),
    (MMTM(8, 4), (torch.randn(2, 4, 3), torch.randn(2, 4, 3)), "stream a expects input of shape (N, 8, *axes) with 8 channels"),
    (MMTM(8, 4), (torch.randn(2, 8, 3), torch.randn(2, 8, 3)), "stream b expects input of shape (N, 4, *axes) with 4 channels"),
    (MMTM(8, 4), (torch.randn(2, 8), torch.randn(4)), "(rank >= 2), got shape (4,)"),
])
def test_bad_input(block, inputs, message):
    assert_fails(lambda: block(*inputs), contains=message)
