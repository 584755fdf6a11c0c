"""Widgets as Python objects: changing a control changes the view's output."""
import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from transcam_nb.widgets import AblationExplorer, table_view


def _result():
    taus = [round(t, 2) for t in np.arange(0, 0.61, 0.05)]
    a = [0.2 + 0.5 * t for t in taus]
    b = [0.5 - 0.5 * t for t in taus]
    mk = lambda m: {"taus": taus, "mious": m, "best_tau": taus[int(np.argmax(m))], "best_miou": max(m),
                    "fixed_tau": 0.25, "fixed_miou": m[5], "iou_fixed": []}
    return {"variants": {"A": mk(a), "B": mk(b)}, "num_images": 3, "class_names": ["x"]}


def test_table_view_reads_the_curve_at_tau():
    t = table_view(_result(), ["A", "B"], 0.5)
    assert t.loc["A", "mIoU at τ=0.50 (%)"] == pytest.approx(100 * (0.2 + 0.25))
    assert t.loc["B", "best τ (GT-picked)"] == 0.0


def test_explorer_controls_change_the_view():
    ex = AblationExplorer(_result(), {"A": ("none", None), "B": ("transcam", "AA")})
    before = ex.last["table"].copy()
    ex.tau.value = 0.5
    after = ex.last["table"]
    assert list(after.columns) != list(before.columns) or not after.equals(before)
    ex.select.value = ("B",)
    assert list(ex.last["table"].index) == ["B"]
