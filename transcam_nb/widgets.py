"""Ablation explorer: one pure function per view, and a thin ipywidgets wrapper.

The views are plain functions of their settings, so the book can call them directly for its
static twins (widgets are inert in the static HTML), and tests can check them without a browser:

* :func:`table_view` — the sweep results of chosen variants as a table (best τ and fixed τ);
* :func:`curve_view` — mIoU against τ for chosen variants, with the fixed τ marked;
* :func:`image_view` — one image: ground truth, the variant's normalised map, its label map at τ.

:class:`AblationExplorer` puts controls (variants, τ, image) around them; every change
re-renders the views into an output area and records the latest view values in ``last``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["table_view", "curve_view", "image_view", "AblationExplorer"]


def table_view(result: dict, names: Sequence[str] | None = None, tau: float | None = None):
    """Rows = variants; columns = best τ (GT-picked), mIoU there, mIoU at ``tau`` (default: the
    result's fixed τ), in percent. A pure function of its arguments."""
    import pandas as pd

    names = list(names or result["variants"])
    rows = []
    for n in names:
        v = result["variants"][n]
        t = v["fixed_tau"] if tau is None else float(tau)
        taus = np.asarray(v["taus"])
        j = int(np.argmin(np.abs(taus - t)))
        rows.append({"variant": n, "best τ (GT-picked)": v["best_tau"], "mIoU at best τ (%)": 100 * v["best_miou"],
                     f"mIoU at τ={taus[j]:.2f} (%)": 100 * v["mious"][j]})
    return pd.DataFrame(rows).set_index("variant").round(2)


def curve_view(result: dict, names: Sequence[str] | None = None, tau: float | None = None, ax=None):
    """The τ curves of ``names`` with ``tau`` (default the fixed τ) marked."""
    from .viz import plot_tau_curve

    names = list(names or result["variants"])
    curves = {n: (result["variants"][n]["taus"], result["variants"][n]["mious"]) for n in names}
    t = tau if tau is not None else result["variants"][names[0]]["fixed_tau"]
    return plot_tau_curve(curves, ax=ax, fixed_tau=t)


def image_view(model, profile, sample, variant: tuple[str, object], tau: float, class_names: Sequence[str]):
    """Ground truth, the variant's map of the first present class, and the label map at ``tau``
    for one dataset item. Returns ``(figure, label_map)``."""
    from .pseudo import label_map
    from .viz import image_grid, show_cam, show_labels
    from .workflow import multiscale_variants

    res = multiscale_variants(model, sample.image, sample.label, variants={"v": variant}, scales=profile.scales,
                              flip=profile.flip, square=profile.square)
    cams, classes = res["v"]
    lab = label_map(cams, classes, tau, num_fg=len(class_names))
    first = class_names[int(classes[0])] if len(classes) else "none"
    fig = image_grid([[lambda ax: show_labels(sample.mask, sample.image, ax),
                       lambda ax: show_cam(sample.image, cams[0] if len(cams) else np.zeros(sample.image.shape[:2]), ax),
                       lambda ax: show_labels(lab, sample.image, ax)]],
                     titles=[["ground truth", f"map: {first}", f"labels, τ={tau:.2f}"]])
    return fig, lab


class AblationExplorer:
    """Interactive explorer over precomputed sweep results (and, given a model, single images).

    ``result`` is :func:`transcam_nb.workflow.evaluate_variants`'s output; ``variants`` the
    ``{name: (method, blocks)}`` it was computed with. ``widget`` is the ipywidgets box to
    display; ``last`` holds the latest table (and label map) so that tests can check updates.
    """

    def __init__(self, result: dict, variants: dict, model=None, profile=None, dataset=None):
        import ipywidgets as W

        self.result, self.variants = result, variants
        self.model, self.profile, self.dataset = model, profile, dataset
        names = list(result["variants"])
        fixed = result["variants"][names[0]]["fixed_tau"]
        self.select = W.SelectMultiple(options=names, value=tuple(names[:2]), description="variants", rows=min(8, len(names)))
        self.tau = W.FloatSlider(value=fixed, min=0.0, max=float(max(result["variants"][names[0]]["taus"])), step=0.01,
                                 description="τ", continuous_update=False)
        self.image = W.IntSlider(value=0, min=0, max=max(0, (len(dataset) - 1) if dataset is not None else 0),
                                 description="image", continuous_update=False)
        # views are rendered to plain HTML/PNG widgets (no Output-widget capture: executing an
        # Output widget's captured display in a headless build hung the notebook client)
        self.table_html = W.HTML()
        self.curve_img = W.Image(format="png")
        self.image_img = W.Image(format="png")
        self.last: dict = {}
        for w in (self.select, self.tau, self.image):
            w.observe(lambda change: self.render(), names="value")
        has_images = model is not None and dataset is not None
        controls = [self.select, self.tau] + ([self.image] if has_images else [])
        self.widget = W.VBox([W.HBox(controls), self.table_html, self.curve_img]
                             + ([self.image_img] if has_images else []))
        self.render()

    def render(self) -> None:
        import io

        import matplotlib.pyplot as plt

        def png(fig) -> bytes:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
            plt.close(fig)
            return buf.getvalue()

        names = list(self.select.value) or list(self.result["variants"])[:1]
        self.last = {"table": table_view(self.result, names, self.tau.value)}
        self.table_html.value = self.last["table"].to_html()
        ax = curve_view(self.result, names, self.tau.value)
        self.curve_img.value = png(ax.figure)
        if self.model is not None and self.dataset is not None:
            s = self.dataset[int(self.image.value)]
            fig, lab = image_view(self.model, self.profile, s, self.variants[names[0]], self.tau.value,
                                  self.dataset.class_names)
            self.last["label_map"] = lab
            self.image_img.value = png(fig)
