"""The book's named figure functions draw what they say (shapes of the panel grid, map kinds)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from transcam_nb import viz  # noqa: E402

IMG = np.full((16, 24, 3), 128, np.uint8)
LAB = np.zeros((16, 24), np.int64)
LAB[4:10, 6:12] = 3
CAM = np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24)


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_cam_gallery_rows_columns_and_kinds():
    fig = viz.cam_gallery([IMG, IMG], {"CAM": [CAM, CAM], "labels": [LAB, None]})
    assert len(fig.axes) == 2 * 3
    assert _titles(fig)[:3] == ["image", "CAM", "labels"]
    # a float map is a heat map over the image (two layers), a label map one blended image
    assert len(fig.axes[1].images) == 2 and len(fig.axes[2].images) == 1
    assert len(fig.axes[5].images) == 0  # None: an empty panel
    plt.close(fig)


def test_label_row_and_image_mask_gallery():
    fig = viz.label_row(IMG, {"ground truth": LAB, "τ = 0.3": LAB * 0})
    assert _titles(fig) == ["ground truth", "τ = 0.3"]
    plt.close(fig)
    fig = viz.image_mask_gallery([IMG] * 3, [LAB] * 3, titles=["a", "b", "c"])
    assert len(fig.axes) == 6 and _titles(fig)[:3] == ["a", "b", "c"]
    plt.close(fig)


def test_show_map_dispatches_on_dtype():
    ax = viz.show_map(IMG, LAB)
    shown = ax.images[0].get_array()
    assert np.array_equal(np.asarray(shown)[5, 7], (0.4 * 128 + 0.6 * viz.colorize_labels(LAB)[5, 7]).astype(np.uint8))
    ax2 = viz.show_map(IMG, CAM)
    assert len(ax2.images) == 2
    plt.close("all")


def test_plot_stages_bars_in_order_with_the_papers_beside():
    ax = viz.plot_stages({"CAM": 40.0, "TransCAM": 45.0, "DeepLab": 50.0}, paper={"DeepLab": 69.3})
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["CAM", "TransCAM", "DeepLab"]
    heights = [round(p.get_height(), 1) for p in ax.patches]
    assert heights == [40.0, 45.0, 50.0, 69.3]
    plt.close("all")


def test_plot_attention_shares_one_line_per_model_and_the_uniform_baseline():
    d = {"obj_to_own": [0.2, 0.5, 0.7], "obj_to_own_uniform": 0.19,
         "bg_to_bg": [0.8, 0.85, 0.9], "bg_to_bg_uniform": 0.74}
    e = {**d, "obj_to_own": [0.1, 0.2, 0.3]}
    fig = viz.plot_attention_shares({"a": d, "b": e})
    left, right = fig.axes
    assert [ln.get_label() for ln in left.lines] == ["a", "uniform attention", "b"]
    assert np.allclose(left.lines[2].get_ydata(), [0.1, 0.2, 0.3])
    assert np.allclose(right.lines[1].get_ydata(), 0.74)  # the baseline of the right panel
    assert list(left.lines[0].get_xdata()) == [1, 2, 3]  # blocks count from 1
    plt.close(fig)


def test_plot_head_weights_draws_blocks_by_heads():
    w = np.full((4, 3), 1 / 12)
    w[2, 1] += 0.1
    ax = viz.plot_head_weights(w / w.sum(), title="w")
    assert ax.images[0].get_array().shape == (4, 3) and ax.get_title() == "w"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3", "4"]
    assert len(ax.texts) == 12 and ax.get_xlabel() == "head"
    plt.close(ax.figure)
