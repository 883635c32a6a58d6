#!/usr/bin/env python
"""CPU correctness check of horizontal fusion (HFTA's idea) for packed runs: N models of one architecture trained as one.

torch.func.stack_module_state stacks the N models' parameters and buffers; torch.func.vmap over functional_call runs
them as one batched program (vmap turns each conv into one grouped conv, each Linear into one batched matmul), each
model on its own batch. One SGD step on the sum of the N losses gives each model exactly its own gradient (the
models share nothing). The check: in float64, N fused models end where N separately trained models end (weights,
momentum-SGD updates, BN running statistics), to float64 rounding; the float32 differences are printed beside it.
Speed is not measured here (CPU); on a GPU the point is N times larger kernels per launch in one process and graph.

    python benchmarks/prototypes/hfta_vmap_check.py --arch resnet8-cifar --attention se --models 3 --steps 3
"""
from __future__ import annotations
import argparse, copy, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ignore_attn.models import get_model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet8-cifar"); p.add_argument("--attention", default="se")
    p.add_argument("--models", type=int, default=3); p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=16); p.add_argument("--lr", type=float, default=0.05)
    a = p.parse_args(argv)
    torch.manual_seed(0); torch.set_num_threads(1)
    models = []
    for i in range(a.models):   # different seeds: different initial weights, as packed runs of several seeds have
        torch.manual_seed(i); models.append(get_model(a.arch, 10, a.attention))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(a.models, a.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (a.models, a.batch), generator=g))
               for _ in range(a.steps)]

    def separate(dtype):
        "N ordinary models, N optimisers, in `dtype`; their state dicts after the steps."
        ms = [copy.deepcopy(m).to(dtype) for m in models]
        opts = [torch.optim.SGD(m.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4) for m in ms]
        for x, y in batches:
            for i, (m, o) in enumerate(zip(ms, opts)):
                o.zero_grad(); F.cross_entropy(m(x[i].to(dtype)), y[i]).backward(); o.step()
        return [m.state_dict() for m in ms]

    def fused(dtype):
        "The same N models stacked into one parameter set, one optimiser, one vmapped forward, in `dtype`."
        params, buffers = stack_module_state([copy.deepcopy(m).to(dtype) for m in models])
        params = {k: v.detach().requires_grad_() for k, v in params.items()}
        base = copy.deepcopy(models[0]).to("meta")
        def one(p, b, x, y): return F.cross_entropy(functional_call(base, (p, b), (x,)), y)
        loss = vmap(one, in_dims=(0, 0, 0, 0), randomness="different")
        opt = torch.optim.SGD(params.values(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
        for x, y in batches:
            opt.zero_grad(); loss(params, buffers, x.to(dtype), y).sum().backward(); opt.step()
        return [{k: v[i].detach() for k, v in {**params, **buffers}.items()} for i in range(a.models)]

    # In float64 the fused and the separate computations must agree to float64 rounding: then they are the same
    # function. (In float32 a few BN biases, whose gradients are sums that nearly cancel, differ by 1e-3 relative
    # between any two float32 orders of summation, separate training against itself in float64 included.)
    ref64, fus64 = separate(torch.float64), fused(torch.float64)
    sep32, fus32 = separate(torch.float32), fused(torch.float32)
    rel = lambda t, r: float(torch.linalg.vector_norm(t.double() - r.double()) / (torch.linalg.vector_norm(r.double()) + 1e-30))
    rows64, rows32 = [], []
    for i in range(a.models):
        for k, r in ref64[i].items():
            if not r.dtype.is_floating_point:
                assert torch.equal(fus64[i][k], r) and torch.equal(fus32[i][k], sep32[i][k]), k   # num_batches_tracked
                continue
            rows64.append((rel(fus64[i][k], r), k)); rows32.append((rel(fus32[i][k], sep32[i][k]), k))
    w64, w32 = max(rows64), max(rows32)
    med32 = sorted(v for v, _ in rows32)[len(rows32) // 2]
    res = {"models": a.models, "steps": a.steps, "tensors": len(rows64), "float64_max_rel": w64[0], "float64_worst": w64[1],
           "float32_max_rel": w32[0], "float32_worst": w32[1], "float32_median_rel": med32}
    print(f"{a.models} x {a.arch} + {a.attention}, {a.steps} SGD steps, {len(rows64)} tensors (BN statistics included): "
          f"fused vs separate in float64: at most {w64[0]:.1e} relative (L2, {w64[1]}); in float32: median {med32:.1e}, "
          f"at most {w32[0]:.1e} ({w32[1]})")
    assert w64[0] < 1e-9, res
    return res


if __name__ == "__main__":
    main()
