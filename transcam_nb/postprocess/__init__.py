"""Post-processing of TransCAM seeds (paper §4.4, docs/reference.md §7).

* :mod:`.crf` — dense CRF (pydensecrf2) with the authors' three parameter sets, and the
  la / ha label maps PSA trains on.
* :mod:`.par` — PAR (AFA's pixel-adaptive refinement): local, image-guided propagation of CAMs
  or probabilities in plain torch (batched, any device, no C++ build); can stand in for the CRF.
* :mod:`.affinity` — PSA's AffinityNet: affinity labels, pairs, loss, the network
  (:mod:`.resnet38d`: its ResNet-38d backbone); :mod:`.affinity_train`: its training.
* :mod:`.random_walk` — the random walk that turns CAMs into refined pseudo labels.

The CRF functions import the ``pydensecrf`` extension only when called, so this package
imports without it.
"""
from .crf import (
    CRF_PRESETS,
    POSTPROCESS_METHODS,
    CRFPreset,
    crf_labels,
    crf_probs,
    get_crf_preset,
    labels_from_cams,
    make_la_ha_labels,
    refine_labels,
)
from .par import PAR_DEFAULT, PARConfig, par_affinity, par_labels, par_probs, par_refine
from .affinity import (
    AffinityNet,
    affinity_labels,
    affinity_loss,
    dense_affinity,
    extract_pair_labels,
    load_affinity_checkpoint,
    pair_affinity,
    pair_indices,
    pair_offsets,
)
from ..config import AFFINITY_PRESETS, AffinityConfig, get_affinity_preset
from .affinity_train import AffinityDataset, train_affinity
from .random_walk import prepare_image, random_walk, transition_matrix
from .resnet38d import ResNet38d

__all__ = [
    "CRF_PRESETS",
    "CRFPreset",
    "crf_labels",
    "crf_probs",
    "get_crf_preset",
    "labels_from_cams",
    "make_la_ha_labels",
    "POSTPROCESS_METHODS",
    "refine_labels",
    "PAR_DEFAULT",
    "PARConfig",
    "par_affinity",
    "par_labels",
    "par_probs",
    "par_refine",
    "AFFINITY_PRESETS",
    "AffinityConfig",
    "AffinityDataset",
    "AffinityNet",
    "ResNet38d",
    "affinity_labels",
    "affinity_loss",
    "dense_affinity",
    "extract_pair_labels",
    "get_affinity_preset",
    "load_affinity_checkpoint",
    "pair_affinity",
    "pair_indices",
    "pair_offsets",
    "prepare_image",
    "random_walk",
    "train_affinity",
    "transition_matrix",
]
