"""The analysis figures' text is readable in the book (issue 20): at the notebooks' 72 dpi a point is a pixel, and the
multi-panel figures once had 7-8 pt titles and legends (5-6 px glyphs). Every text is now at least 9 pt."""
from __future__ import annotations
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.text import Text

import ignore_attn.analysis as A

MIN_PT = 9

def probes() -> pd.DataFrame:
    "A SYNTHETIC probe table: two methods, two seeds, three epochs of each measure probe_figure draws."
    rng, rows = np.random.default_rng(0), []
    for att in ("cbam", "cbam-ign3"):
        for seed in (0, 1):
            for ep in (1, 2, 3):
                base = dict(dataset="cluttered-digits", arch="resnet8", attention=att, seed=seed, run_id=f"{att}{seed}",
                            epoch=ep, synthetic=True)
                rows += [base | dict(kind="spatial", stage="stage1", measure="auc_vs_digit", value=rng.random()),
                         base | dict(kind="channel", stage="stage1", measure="std_within", value=rng.random()),
                         base | dict(kind="loss", stage="-", measure="val_loss", value=rng.random())]
    return pd.DataFrame(rows)

def figures() -> dict:
    g = torch.Generator().manual_seed(0)
    images, maps = torch.rand(3, 3, 32, 32, generator=g), {k: torch.rand(3, 32, 32, generator=g) for k in ("stage1", "stage2", "stage3")}
    frame = lambda: pd.DataFrame(dict(module="layer1.0", stage=["stage1"] * 40, value=torch.rand(40, generator=g).numpy()))
    return {"spatial_mask_figure": lambda: A.spatial_mask_figure(images, maps, {k: k for k in maps}, n=3, title="SYNTHETIC"),
            "grad_cam_figure": lambda: A.grad_cam_figure(images, maps, n=3, title="SYNTHETIC Grad-CAM"),
            "probe_figure": lambda: A.probe_figure(probes()),
            "channel_mask_figure": lambda: A.channel_mask_figure({"se": frame(), "se-ign3": frame()})}

@pytest.mark.parametrize("name", list(figures()))
def test_every_text_at_least_9_pt(name):
    fig = figures()[name]()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    small = sorted({(round(t.get_fontsize(), 1), t.get_text()) for t in texts if t.get_fontsize() < MIN_PT})
    assert small == [], f"{name}: text under {MIN_PT} pt: {small[:5]}"
