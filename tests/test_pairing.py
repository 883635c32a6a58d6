"Common random numbers: the runs of one seed differ only in their attention branch (backbone init, batches, augmentation); what config.json records of it."
from __future__ import annotations
import json
from pathlib import Path

import torch

from ignore_attn.data import DataConfig
from ignore_attn.engine import cpu_has_bf16
from ignore_attn.registry import get_model
from ignore_attn.train import TrainConfig
from ignore_attn.engine import setup_run

torch.set_num_threads(1)

# The quick sweep's model on a tiny Cluttered Digits, with shifts and flips on so that augmentation draws are tested too.
DATA = DataConfig(n_train=128, n_val=32, n_test=32, image_size=16, augment="shift-flip", workers=0)
SPECS = ("standard", "se-ign3", "cbam")


def start(tmp_path: Path, attention: str, seed: int = 3, **kw):
    "A run set up (data, model, config.json) but not trained; its folder's lock released."
    cfg = TrainConfig(arch="resnet8-cifar", attention=attention, seed=seed, schedule="quick", epochs=1, batch_size=32,
                      device="cpu", quiet=True, data=DATA, out=str(tmp_path / f"{attention}-s{seed}"), **kw)
    run = setup_run(cfg)
    run.run_dir.unlock()
    return run


def differing_backbone(a: torch.nn.Module, standard: torch.nn.Module) -> list[str]:
    "Tensors of the attention-free `standard` (all of them backbone) that differ from `a`'s."
    sa, sb = a.state_dict(), standard.state_dict()
    return [k for k in sb if not torch.equal(sa[k], sb[k])]


def batches(run, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    "The training batches (augmented images, labels) of `epoch`."
    run.data.train.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in run.data.train]


def test_specs_of_one_seed_share_the_backbone_init(tmp_path):
    runs = {a: start(tmp_path, a) for a in SPECS}
    for a in SPECS[1:]:
        assert differing_backbone(runs[a].model, runs["standard"].model) == [], a
    other = start(tmp_path, "se-ign3", seed=4)
    assert len(differing_backbone(other.model, runs["standard"].model)) > 0  # another seed, another backbone


def test_config_json_records_the_pairing(tmp_path):
    run = start(tmp_path, "se-ign3")
    saved = json.loads((run.run_dir.path / "config.json").read_text())
    assert saved["pairing"] == {"backbone_init": "seed", "data_order": "seed", "augmentation": "seed"}
    assert saved["config"]["backbone_init"] == "seed"
    fast = cpu_has_bf16()   # how it computed, as resolved here: bf16 + channels-last on a CPU with native bf16
    assert saved["runtime"] == {"device": "cpu", "amp": "bf16" if fast else "off", "channels_last": fast,
                                "compile": False, "cuda_graphs": False}


def test_spec_init_is_the_unpaired_build(tmp_path):
    "backbone_init='spec' keeps the old behaviour (one generator for the whole build), for comparisons with it."
    a, b = start(tmp_path, "standard", backbone_init="spec"), start(tmp_path, "se-ign3", backbone_init="spec")
    assert len(differing_backbone(b.model, a.model)) > 0
    torch.manual_seed(3)
    old = get_model("resnet8-cifar", 10, "se-ign3")
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in b.model.state_dict().items())
    saved = json.loads((b.run_dir.path / "config.json").read_text())
    assert saved["pairing"]["backbone_init"] == "seed+spec"


def test_batches_and_augmentation_depend_on_the_seed_alone(tmp_path):
    runs = {a: start(tmp_path, a) for a in SPECS}
    for epoch in (0, 1):
        ref = batches(runs["standard"], epoch)
        for a in SPECS[1:]:
            got = batches(runs[a], epoch)
            assert len(got) == len(ref)
            assert all(torch.equal(x, rx) and torch.equal(y, ry) for (x, y), (rx, ry) in zip(got, ref)), (a, epoch)
    other = batches(start(tmp_path, "standard", seed=4), 0)
    assert not torch.equal(other[0][1], batches(runs["standard"], 0)[0][1])  # another seed, another order


def test_old_checkpoints_still_load(tmp_path):
    "Only the initial weights changed: a state dict of the unpaired build loads into the paired one exactly."
    torch.manual_seed(0)
    old = get_model("resnet8-cifar", 10, "cbam-ign3").state_dict()
    new = get_model("resnet8-cifar", 10, "cbam-ign3", seed=0)
    new.load_state_dict(old)
    assert all(torch.equal(v, old[k]) for k, v in new.state_dict().items())
