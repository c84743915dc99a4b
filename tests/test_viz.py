"""Saved tables: the CSV keeps full precision; the Markdown rounds accuracies but not the swept values.
Perturbations made visible: grey is zero, the largest change is black or white."""
from __future__ import annotations

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
