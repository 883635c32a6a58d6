"""The analysis helpers on wrapped models (DataParallel, a DDP-style `.module` shell, torch.compile) give the bare
model's answers: the same layers, stage names and mask keys, equal masks and Grad-CAM maps (issue 20)."""
from __future__ import annotations
import pytest
import torch
from torch import nn

from ignore_attn.analysis import attention_masks, attention_stages, cam_layer, grad_cam, probe_model
from ignore_attn.registry import get_model, unwrap_model

torch.set_num_threads(1)

class Shell(nn.Module):
    "What DistributedDataParallel looks like from outside (it needs a process group): the network as `.module`."
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
    def forward(self, *args): return self.module(*args)

WRAPPERS = {"DataParallel": nn.DataParallel, "module-shell": Shell,
            "compile": lambda m: torch.compile(m, backend="eager"),
            "shell-of-compiled-DataParallel": lambda m: Shell(torch.compile(nn.DataParallel(m), backend="eager"))}

@pytest.fixture(scope="module")
def bare():
    torch.manual_seed(0)
    return get_model("resnet20-cifar", attention="cbam-ign3").eval()

@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

@pytest.mark.parametrize("wrap", WRAPPERS)
def test_unwrap_model(bare, wrap):
    assert unwrap_model(WRAPPERS[wrap](bare)) is bare

@pytest.mark.parametrize("wrap", WRAPPERS)
def test_analysis_on_wrapped_equals_bare(bare, images, wrap):
    model = WRAPPERS[wrap](bare)
    stages = attention_stages(model)
    assert stages == attention_stages(bare)
    assert set(stages.values()) == {"stage1", "stage2", "stage3"}
    assert cam_layer(model) is cam_layer(bare) is bare.layer3
    masks, want = attention_masks(model, images), attention_masks(bare, images)
    assert list(masks) == list(want) and all(not k.startswith(("module.", "_orig_mod.")) for k in masks)
    for k in want:
        for part in ("channel", "spatial"): assert torch.equal(masks[k][part], want[k][part])
    assert torch.equal(grad_cam(model, images, bare.layer3), grad_cam(bare, images, bare.layer3))
    distractors = torch.zeros(3, 32, 32, dtype=torch.bool); distractors[:, :8] = True
    digits = ~distractors   # both given: no NaN in the probe, so == compares every number
    assert probe_model(model, images, distractors, digits) == probe_model(bare, images, distractors, digits)

def test_two_stream_model_stages_when_wrapped():
    torch.manual_seed(0)
    net = get_model("mmtm-fusion-tiny", attention="mmtm-ign3").eval()
    want = attention_stages(net)
    assert list(want) == ["fusion.layer2", "fusion.layer3", "fusion.layer4"]
    for wrap in WRAPPERS.values(): assert attention_stages(wrap(net)) == want

def test_a_model_with_a_child_called_module_is_not_a_wrapper():
    "Only a module whose one child is `module` counts as a shell; a network with more children is left alone."
    net = nn.Sequential()
    net.add_module("module", nn.Linear(2, 2)); net.add_module("head", nn.Linear(2, 2))
    assert unwrap_model(net) is net
