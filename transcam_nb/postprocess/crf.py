"""Fully connected (dense) CRF post-processing, as the TransCAM / PSA / DeepLab code uses it.

The CRF is Krähenbühl & Koltun's mean-field inference with a Gaussian (smoothness) kernel and
a bilateral (appearance) kernel, reached through the ``pydensecrf2`` package (import name
``pydensecrf``; a C++ extension built at install time: ``pip install pydensecrf2`` needs a C++
compiler and the Python headers).

Three parameter sets are used by the reference code (docs/reference.md §7.3); each is a named,
frozen :class:`CRFPreset` in :data:`CRF_PRESETS`:

===========  ==================  =========================  ==========================  =====
preset       unary               gaussian                   bilateral                   iters
===========  ==================  =========================  ==========================  =====
``label``    from labels,        sxy 3, compat 3            sxy 50, srgb 5, compat 10   10
             gt_prob 0.7                                    
``psa``      from softmax        sxy 3/scale, compat 3      sxy 80/scale, srgb 13, c 10 10
``deeplab``  from softmax        sxy 3/scale, compat 3      sxy 32/scale, srgb 13, c 10 1
===========  ==================  =========================  ==========================  =====

* ``label`` is the authors' ``crf_inference_label``: it refines the hard la/ha label maps in
  ``infer_TransCAM.py`` (docs/reference.md §3, thresholds 0.60 / 0.25) and the random-walk output in
  ``infer_aff.py`` (§7.2 step 9). Use :func:`crf_labels`.
* ``psa`` is PSA's ``crf_inference`` (defined in the authors' ``tool/imutils`` but unused by
  their pipeline), ``deeplab`` the DeepLab test-time ``dense_crf``. Use :func:`crf_probs`.

:func:`make_la_ha_labels` builds the two PSA training label maps from normalised CAMs exactly
as ``infer_TransCAM.py`` does: a score tensor with the constant background threshold in
channel 0 and the CAMs at ``class + 1``, argmax, then the ``label`` CRF.

:func:`refine_labels` is the one switch between this CRF and PAR (:mod:`.par`, AFA's
pixel-adaptive refinement, plain torch, no C++ build) for hard label maps: the pipeline's
``postprocess`` setting (``"crf"``, the paper, or ``"par"``) reaches the la/ha labels and the
random walk's final step through it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..pseudo import score_tensor
from .checks import _as_numpy, _check_image, _check_labels, _check_probs  # noqa: F401 (also crf._check_*)

__all__ = [
    "CRFPreset",
    "CRF_PRESETS",
    "get_crf_preset",
    "crf_labels",
    "crf_probs",
    "POSTPROCESS_METHODS",
    "refine_labels",
    "make_la_ha_labels",
    "labels_from_cams",
    "require_pydensecrf",
]

_INSTALL_HINT = (
    "Dense CRF needs the C++ extension from the 'pydensecrf2' package (import name 'pydensecrf'). "
    "Install it into this environment with:  pip install pydensecrf2   "
    "(it compiles from source: a C++ compiler such as g++ and the Python development headers "
    "must be present; on conda use the environment.yml of this project)."
)


@dataclass(frozen=True)
class CRFPreset:
    """One dense-CRF parameter set (docs/reference.md §7.3).

    ``unary`` is ``"labels"`` (``unary_from_labels``: a hard label map with confidence
    ``gt_prob``) or ``"softmax"`` (``unary_from_softmax``: −log of class probabilities).
    ``scale_sxy`` says whether both spatial standard deviations are divided by the caller's
    ``scale_factor`` (the softmax presets do this, the label preset does not).
    """

    name: str
    unary: str  # "labels" | "softmax"
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    iterations: int
    gt_prob: float | None = None  # unary "labels" only
    zero_unsure: bool = False  # unary "labels" only
    scale_sxy: bool = False

    def replace(self, **changes) -> "CRFPreset":
        """A copy with some fields changed (e.g. ``iterations=5``)."""
        return dataclasses.replace(self, **changes)


CRF_PRESETS: dict[str, CRFPreset] = {
    # infer_TransCAM.py / infer_aff.py: crf_inference_label
    "label": CRFPreset(
        name="label",
        unary="labels",
        gt_prob=0.7,
        zero_unsure=False,
        gaussian_sxy=3,
        gaussian_compat=3,
        bilateral_sxy=50,
        bilateral_srgb=5,
        bilateral_compat=10,
        iterations=10,
        scale_sxy=False,
    ),
    # tool/imutils.crf_inference (PSA style; unused by the authors' pipeline)
    "psa": CRFPreset(
        name="psa",
        unary="softmax",
        gaussian_sxy=3,
        gaussian_compat=3,
        bilateral_sxy=80,
        bilateral_srgb=13,
        bilateral_compat=10,
        iterations=10,
        scale_sxy=True,
    ),
    # DeepLab test-time dense_crf
    "deeplab": CRFPreset(
        name="deeplab",
        unary="softmax",
        gaussian_sxy=3,
        gaussian_compat=3,
        bilateral_sxy=32,
        bilateral_srgb=13,
        bilateral_compat=10,
        iterations=1,
        scale_sxy=True,
    ),
}


def get_crf_preset(preset: str | CRFPreset, **overrides) -> CRFPreset:
    """Resolve a preset name (or pass a :class:`CRFPreset` through) and apply overrides."""
    if isinstance(preset, CRFPreset):
        p = preset
    elif isinstance(preset, str):
        if preset not in CRF_PRESETS:
            raise ValueError(f"unknown CRF preset {preset!r}; choose one of {sorted(CRF_PRESETS)} or pass a CRFPreset")
        p = CRF_PRESETS[preset]
    else:
        raise TypeError(f"preset must be a preset name or a CRFPreset, got {type(preset).__name__}")
    if overrides:
        fields = {f.name for f in dataclasses.fields(CRFPreset)}
        unknown = set(overrides) - fields
        if unknown:
            raise TypeError(f"unknown CRF preset field(s) {sorted(unknown)}; known: {sorted(fields)}")
        p = p.replace(**overrides)
    if p.iterations < 0:
        raise ValueError(f"CRF iterations must be >= 0, got {p.iterations}")
    return p


def require_pydensecrf():
    """Import and return ``(pydensecrf.densecrf, pydensecrf.utils)``; a clear ImportError if absent."""
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as dutils
    except ImportError as exc:  # includes a broken / half-built extension
        raise ImportError(f"{_INSTALL_HINT} (original error: {exc})") from exc
    return dcrf, dutils


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
def _run(image: np.ndarray, unary: np.ndarray, n_labels: int, p: CRFPreset, scale_factor: float) -> np.ndarray:
    dcrf, _ = require_pydensecrf()
    h, w = image.shape[:2]
    s = float(scale_factor) if p.scale_sxy else 1.0
    if s <= 0:
        raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=p.gaussian_sxy / s, compat=p.gaussian_compat)
    d.addPairwiseBilateral(sxy=p.bilateral_sxy / s, srgb=p.bilateral_srgb, rgbim=image, compat=p.bilateral_compat)
    q = d.inference(int(p.iterations))
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def crf_labels(image, labels, n_labels: int, preset: str | CRFPreset = "label", **overrides) -> np.ndarray:
    """Refine a hard label map with a dense CRF (the authors' ``crf_inference_label``).

    Parameters
    ----------
    image:
        uint8 RGB image, shape (H, W, 3) (copied to C order if it is not).
    labels:
        integer label map (H, W) with values in ``0 .. n_labels-1`` (0 = background). Ignore
        values such as 255 are rejected: map them to a class first.
    n_labels:
        number of labels *including* background (21 for VOC, as the reference). It changes
        the unary: every label other than the given one gets ``-log((1-gt_prob)/(n_labels-1))``.
    preset:
        a preset whose ``unary`` is ``"labels"`` (default ``"label"``: gt_prob 0.7,
        zero_unsure False, gaussian sxy 3 / compat 3, bilateral sxy 50 / srgb 5 / compat 10,
        10 iterations; docs/reference.md §7.3). Keyword overrides change single fields.

    Returns
    -------
    uint8 (or int64 when ``n_labels > 256``) label map (H, W): the argmax of the CRF marginals.
    """
    p = get_crf_preset(preset, **overrides)
    if p.unary != "labels":
        raise ValueError(f"crf_labels needs a preset with unary 'labels'; {p.name!r} uses {p.unary!r} (use crf_probs)")
    if p.gt_prob is None or not 0 < p.gt_prob < 1:
        raise ValueError(f"preset {p.name!r}: gt_prob must lie in (0, 1), got {p.gt_prob}")
    img = _check_image(image)
    lab = _check_labels(labels, n_labels, img.shape[:2])
    _, dutils = require_pydensecrf()
    unary = dutils.unary_from_labels(lab, int(n_labels), gt_prob=p.gt_prob, zero_unsure=p.zero_unsure)
    q = _run(img, unary, int(n_labels), p, 1.0)
    out = np.argmax(q, axis=0)
    return out.astype(np.uint8 if n_labels <= 256 else np.int64)


#: the label post-processings of :func:`refine_labels`: the dense CRF (the paper) and PAR
POSTPROCESS_METHODS = ("crf", "par")


def check_postprocess(postprocess: str) -> str:
    """``postprocess`` if it names one of :data:`POSTPROCESS_METHODS`, else a ``ValueError``."""
    if postprocess not in POSTPROCESS_METHODS:
        raise ValueError(f"postprocess must be one of {POSTPROCESS_METHODS}, got {postprocess!r}")
    return postprocess


def refine_labels(image, labels, n_labels: int, postprocess: str = "crf", preset: str | CRFPreset = "label") -> np.ndarray:
    """Refine a hard label map (H, W) guided by the uint8 image (H, W, 3) with the chosen
    post-processing: ``"crf"`` = :func:`crf_labels` (``preset``, the paper's ``label`` CRF) or
    ``"par"`` = :func:`~transcam_nb.postprocess.par.par_labels` (AFA's settings; ``preset`` is
    not used). Returns the label map (uint8 up to 256 labels)."""
    if check_postprocess(postprocess) == "par":
        from .par import par_labels

        return par_labels(image, labels, n_labels)
    return crf_labels(image, labels, n_labels, preset=preset)


def crf_probs(image, probs, preset: str | CRFPreset = "deeplab", scale_factor: float = 1.0, **overrides) -> np.ndarray:
    """Refine class probabilities (C, H, W) with a dense CRF; returns the CRF marginals.

    ``preset`` is ``"deeplab"`` (the DeepLab test ``dense_crf``: bilateral sxy 32, srgb 13,
    1 iteration) or ``"psa"`` (PSA's ``crf_inference``: bilateral sxy 80, srgb 13,
    10 iterations); in both the spatial ``sxy`` values are divided by ``scale_factor`` (for
    images that were downscaled by that factor). The unary is ``-log(clip(probs, 1e-5, 1))``
    (``unary_from_softmax``).

    Returns float32 (C, H, W) probabilities (each pixel sums to 1); take ``argmax(0)`` for labels.
    """
    p = get_crf_preset(preset, **overrides)
    if p.unary != "softmax":
        raise ValueError(f"crf_probs needs a preset with unary 'softmax'; {p.name!r} uses {p.unary!r} (use crf_labels)")
    img = _check_image(image)
    pr = _check_probs(probs, img.shape[:2])
    _, dutils = require_pydensecrf()
    unary = dutils.unary_from_softmax(pr)
    return _run(img, unary, pr.shape[0], p, scale_factor)


# --------------------------------------------------------------------------------------------
# la / ha labels for PSA
# --------------------------------------------------------------------------------------------
def _check_cams(cams, classes, hw: tuple[int, int] | None, num_classes: int):
    cams = _as_numpy(cams, "cams")
    if cams.ndim == 2:
        cams = cams[None]
    if cams.ndim != 3:
        raise ValueError(f"cams must be normalised CAMs of shape (K, H, W), got shape {cams.shape}")
    if not np.issubdtype(cams.dtype, np.floating):
        raise TypeError(f"cams must be floating point (normalised CAMs in [0, 1]), got dtype {cams.dtype}")
    classes = [int(c) for c in np.asarray(_as_numpy(classes, "classes")).reshape(-1)]
    if len(classes) != cams.shape[0]:
        raise ValueError(f"classes has {len(classes)} entries but cams has {cams.shape[0]} channels")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat, got {classes}")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class indices must be 0-based foreground indices in [0, {num_classes - 1}], got {bad}")
    if hw is not None and cams.shape[1:] != tuple(hw):
        raise ValueError(f"cams spatial shape {cams.shape[1:]} differs from the image's {tuple(hw)}")
    return cams.astype(np.float32, copy=False), classes


def labels_from_cams(cams, classes, threshold: float, num_classes: int = 20) -> np.ndarray:
    """Hard labels before the CRF (docs/reference.md §3, Eq. 7–8): a constant ``threshold`` in
    channel 0, CAM of class ``k`` in channel ``k+1``, argmax. Ties go to the lower channel
    (background first), as ``np.argmax``. Returns uint8 (H, W) with values in 0..num_classes.

    The score tensor is :func:`transcam_nb.pseudo.score_tensor` (Eq. 7, the authors'
    ``(num_classes + 1)``-channel tensor; absent classes score 0)."""
    cams, classes = _check_cams(cams, classes, None, num_classes)
    scores = score_tensor(cams, classes, threshold, num_fg=num_classes, shape=cams.shape[1:])
    return scores.argmax(0).astype(np.uint8 if num_classes < 256 else np.int64)


def make_la_ha_labels(
    image,
    cams,
    classes: Sequence[int],
    thresholds: Sequence[float] = (0.60, 0.25),
    num_classes: int = 20,
    preset: str | CRFPreset = "label",
    postprocess: str = "crf",
) -> tuple[np.ndarray, ...]:
    """The PSA training labels from normalised CAMs, as ``infer_TransCAM.py`` (docs/reference.md §3).

    For each background threshold τ in ``thresholds`` (default 0.60 → "la", confident
    foreground; 0.25 → "ha", confident background): scores = [τ, CAM_c for present c] →
    argmax → :func:`crf_labels` with ``n_labels = num_classes + 1`` (21 for VOC); with
    ``postprocess="par"`` PAR instead of the CRF (:func:`refine_labels`).

    ``cams``: float32 (K, H, W) normalised CAMs of the K present classes at the image's size
    (as :func:`transcam_nb.cam.multiscale_cam` returns); ``classes``: their 0-based foreground
    indices. Returns one uint8 (H, W) label map per threshold, in the order given.
    """
    check_postprocess(postprocess)
    img = _check_image(image)
    cams, classes = _check_cams(cams, classes, img.shape[:2], num_classes)
    out = []
    for t in thresholds:
        hard = labels_from_cams(cams, classes, float(t), num_classes)
        out.append(refine_labels(img, hard, num_classes + 1, postprocess, preset=preset))
    return tuple(out)
