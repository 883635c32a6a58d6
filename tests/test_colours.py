"""One colour per method, from its name: the same in every figure whatever else the figure holds (the quick sweep's
real runs in nbs/fixtures/quick, drawn whole and in subsets), no colour near white, families sharing a hue."""
import colorsys
from pathlib import Path

import matplotlib.colors as mcolors
import pytest

from ignore_attn.analysis import (channel_mask_frame, channel_mask_figure, collect_runs, error_figure, load_history,
                                  loss_curves_figure, method_colour, method_order)
from ignore_attn.flip import all_specs

QUICK = Path(__file__).resolve().parents[1] / "nbs" / "fixtures" / "quick"
EVERY = method_order(["standard", "se-const", "cbam-const"] + [s for k in ("se", "cbam", "mmtm") for s in all_specs(k, extras=True)])


@pytest.fixture(scope="module")
def quick():
    return collect_runs(QUICK)


def hexes(colours) -> list[str]:
    return [mcolors.to_hex(c) for c in colours]


def error_colours(fig) -> dict[str, str]:
    "{method: colour of its mean-and-interval marker}, from the y tick labels of `error_figure`."
    ax = fig.axes[0]
    names = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    return {names[round(c.lines[0].get_ydata()[0])]: mcolors.to_hex(c.lines[0].get_color()) for c in ax.containers}


def test_a_colour_depends_on_the_name_alone(quick):
    whole = error_colours(error_figure(quick, "cluttered-digits", "resnet8-cifar"))
    assert set(whole) == set(quick["attention"]) and len(set(whole.values())) == len(whole)
    part = error_colours(error_figure(quick[quick["attention"].isin(["cbam", "cbam-ign3"])], "cluttered-digits", "resnet8-cifar"))
    assert part == {m: whole[m] for m in ("cbam", "cbam-ign3")} == {m: method_colour(m) for m in ("cbam", "cbam-ign3")}
    history = load_history(quick)
    lines = {l.get_label(): mcolors.to_hex(l.get_color()) for l in loss_curves_figure(history, "cluttered-digits", "resnet8-cifar",
                                                                                       methods=["se-ign3", "standard"]).axes[0].get_legend().get_lines()}
    assert lines == {"se-ign3": whole["se-ign3"], "standard": whole["standard"]}


def test_channel_mask_figure_uses_the_method_colours():
    import torch
    frames = {m: channel_mask_frame({"layer1.0": torch.rand(4, 8)}) for m in ("se-ign3", "cbam")}
    fig = channel_mask_figure(frames)
    legend = {t.get_text(): mcolors.to_hex(h.get_facecolor()) for t, h in zip(fig.axes[0].get_legend().get_texts(),
                                                                              fig.axes[0].get_legend().legend_handles)}
    assert legend == {"cbam": method_colour("cbam"), "se-ign3": method_colour("se-ign3")}


def test_families_share_a_hue_attend_is_darkest_control_is_grey():
    hls = {m: colorsys.rgb_to_hls(*mcolors.to_rgb(method_colour(m))) for m in EVERY}
    assert max(0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in (mcolors.to_rgb(method_colour(m)) for m in EVERY)) < 0.75
    assert len({method_colour(m) for m in EVERY}) == len(EVERY)
    for kind in ("se", "cbam", "mmtm"):
        paper = [kind, f"{kind}-ign1(1.0)", f"{kind}-ign2", f"{kind}-ign3"]
        assert len({round(hls[m][0], 2) for m in paper}) == 1                      # one hue per family
        assert [hls[m][1] for m in paper] == sorted(hls[m][1] for m in paper)      # attend darkest, ign3 lightest
    for control in ("se-const", "cbam-const"):
        assert hls[control][2] < 0.2                                                # grey: hardly any saturation
    assert hls["standard"][1] < 0.2                                                 # no attention: near black
