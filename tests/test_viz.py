"""Saved tables: the CSV keeps full precision; the Markdown rounds accuracies but not the swept values.
Perturbations made visible: grey is zero, the largest change is black or white."""
from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
import torch

from eclipse.viz import amplify_for_display, save_table


def test_markdown_keeps_swept_float_index_digits(tmp_path):
    table = pd.DataFrame({"lsp": [60.3125, 59.1]}, index=pd.Index([0.025, 0.05], name="sigma"))
    csv, md = save_table(table, "fig5c-sigma", tmp_path)
    text = md.read_text()
    assert "0.025" in text and "0.03 " not in text  # the index is not rounded to floatfmt
    assert "60.31" in text and "60.3125" not in text  # the values are
    assert pd.read_csv(csv, index_col=0).loc[0.025, "lsp"] == 60.3125


def test_display_names_and_one_colour_per_attack():
    from eclipse.viz import ATTACK_COLORS, attack_color, display_name

    assert [display_name(n) for n in ("urp", "iss-j", "eclipse:A+B+C", "none", "urp (no crop)", "AVG")] == [
        "URP", "ISS-J", "ECLIPSE (A+B+C)", "no defense", "URP (no crop)", "AVG"]
    attacks = ["em", "tap", "rem", "sep", "efp", "urp", "lsp", "ar", "ops", "adp", "clean"]
    assert set(attacks) <= set(ATTACK_COLORS) and len({ATTACK_COLORS[a] for a in attacks}) == len(attacks)
    assert attack_color("urp (no crop)") == attack_color("URP") == ATTACK_COLORS["urp"]


def test_amplify_for_display():
    delta = torch.zeros(2, 3, 32, 32)
    delta[0, 0, 0, 0] = 10 / 255
    delta[1, 1, 5, 5] = -5 / 255
    shown = amplify_for_display(delta)
    assert float(shown.min()) >= 0 and float(shown.max()) <= 1
    assert float(shown[0, 0, 0, 0]) == pytest.approx(1.0) and float(shown[0, 0, 1, 1]) == pytest.approx(0.5)
    assert float(shown[1, 1, 5, 5]) == pytest.approx(0.25)
    clipped = amplify_for_display(delta, scale=100.0)
    assert float(clipped.max()) == 1.0 and float(clipped.min()) == 0.0
    assert torch.equal(amplify_for_display(torch.zeros(3, 4)), torch.full((3, 4), 0.5))
    with pytest.raises(ValueError, match="scale"):
        amplify_for_display(torch.zeros(2), scale=0)
    with pytest.raises(ValueError, match="float"):
        amplify_for_display(torch.zeros(2, dtype=torch.uint8))


def test_display_gain_maps_the_99th_percentile_to_full_range_and_states_it():
    from eclipse.viz import display_gain

    delta = torch.linspace(-0.02, 0.02, 3 * 32 * 32).reshape(1, 3, 32, 32)
    gain = display_gain(delta, delta * 0.5)  # all deltas together
    assert gain == float(f"{gain:.2g}")  # two significant digits, so a label can state it exactly
    values = torch.cat([delta, delta * 0.5]).abs().flatten()
    level = float(values.kthvalue(int(0.99 * values.numel())).values)  # the 99th percentile
    assert 0.9 * 0.5 / level <= gain <= 0.5 / level  # takes it to black/white (less the rounding)
    assert float((values * gain > 0.5).float().mean()) <= 0.01
    assert display_gain(torch.full((1, 3, 2, 2), 0.5 / 123.4)) == 120  # rounded down
    assert display_gain(torch.zeros(1, 3, 4, 4)) == 1.0
    with pytest.raises(ValueError):
        display_gain()


def test_labelled_grid_draws_groups_labels_title_and_caption():
    from eclipse.viz import labelled_grid

    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    fig = labelled_grid({"URP\n(x12)": [images, images.float() / 255], "LSP (x3)": [images, images]},
                        groups=["poison", "left"], title="Fig. 6", caption="one gain per row")
    texts = [t.get_text() for t in fig.texts]
    assert len(fig.axes) == 8 and {"URP\n(x12)", "LSP (x3)", "poison", "left", "Fig. 6"} <= set(texts)
    assert any("one gain per row" in t for t in texts)
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_accuracy_heatmap_shows_the_paper_value_under_ours_where_it_has_one():
    import pandas as pd

    from eclipse import viz

    ours = pd.DataFrame({"none": [11.0, 25.55], "ECLIPSE": [62.06, 71.03]}, index=["URP", "LSP"])
    theirs = pd.DataFrame({"none": [13.54, float("nan")], "ECLIPSE": [83.07, 80.49]}, index=["URP", "LSP"])
    fig = viz.accuracy_heatmap(ours, "t", paper=theirs)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["11.0\npaper 13.5", "25.6", "62.1\npaper 83.1", "71.0\npaper 80.5"]
    plain = viz.accuracy_heatmap(ours, "t")
    assert sorted(t.get_text() for t in plain.axes[0].texts) == ["11.0", "25.6", "62.1", "71.0"]


def test_pareto_plot_sets_equal_cost_points_apart_and_rings_the_front():
    from eclipse.viz import pareto_plot, purifier_color

    points = pd.DataFrame({"purifier": ["one_shot", "one_shot", "respaced-4", "respaced-4", "ddim-4", "ddim-4"],
                           "modules": ["A", "A+B+C"] * 3, "nfe": [1, 1, 4, 4, 4, 4],
                           "test_acc": [38.0, 45.0, 41.7, 44.9, 37.3, 43.6],
                           "pareto": [False, True, False, False, False, False]})
    fig = pareto_plot(points, title="t", paper_value=84.7)
    ax = fig.axes[0]
    drawn = {}  # colour -> x positions of that purifier's markers
    for coll in ax.collections[:-1]:  # the last collection is the Pareto ring
        colour = matplotlib.colors.to_hex(coll.get_facecolor()[0])
        drawn.setdefault(colour, set()).update(float(x) for x, _ in coll.get_offsets())
    assert set(drawn) == {purifier_color(p) for p in ("one_shot", "respaced-4", "ddim-4")}
    assert len({purifier_color(p) for p in ("one_shot", "respaced-4", "ddim-4", "consistency", "masked-2")}) == 5
    x_respaced, x_ddim = drawn[purifier_color("respaced-4")], drawn[purifier_color("ddim-4")]
    assert x_respaced.isdisjoint(x_ddim) and all(3.5 < x < 4.5 for x in x_respaced | x_ddim)  # apart, near 4
    ring = ax.collections[-1].get_offsets()
    assert len(ring) == 1 and float(ring[0][1]) == 45.0
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "respaced-4" in labels and "paper ECLIPSE (84.7)" in labels and "Pareto front" in labels
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4"]
