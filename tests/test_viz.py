"""Saved tables: the CSV keeps full precision; the Markdown rounds accuracies but not the swept values."""
from __future__ import annotations

import pandas as pd

from eclipse.viz import save_table


def test_markdown_keeps_swept_float_index_digits(tmp_path):
    table = pd.DataFrame({"lsp": [60.3125, 59.1]}, index=pd.Index([0.025, 0.05], name="sigma"))
    csv, md = save_table(table, "fig5c-sigma", tmp_path)
    text = md.read_text()
    assert "0.025" in text and "0.03 " not in text  # the index is not rounded to floatfmt
    assert "60.31" in text and "60.3125" not in text  # the values are
    assert pd.read_csv(csv, index_col=0).loc[0.025, "lsp"] == 60.3125
