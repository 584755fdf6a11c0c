"""DeepLab segmentation stage (paper §4.4, docs/reference.md §8): the model on a timm backbone,
training on pseudo labels, multi-scale + flip inference with optional CRF, evaluation and the
VOC evaluation-server export."""
from .deeplab import DeepLab, load_backbone_weights  # noqa: F401
from .infer import (  # noqa: F401
    TEST_SCALES,
    evaluate_segmentation,
    export_voc_test,
    make_submission_archive,
    predict,
    predict_logits,
    predict_voc_test,
    read_label,
    voc_palette,
    voc_results_dir,
)
from .train import (  # noqa: F401
    SEG_PRESETS,
    SegConfig,
    TrainResult,
    get_seg_config,
    joint_augment,
    load_segmentation_model,
    poly_lr,
    train_segmentation,
)

__all__ = [
    "DeepLab", "load_backbone_weights", "TEST_SCALES", "evaluate_segmentation", "export_voc_test",
    "make_submission_archive", "predict", "predict_logits", "predict_voc_test", "read_label",
    "voc_palette", "voc_results_dir", "SEG_PRESETS",
    "SegConfig", "TrainResult", "get_seg_config", "joint_augment", "load_segmentation_model",
    "poly_lr", "train_segmentation",
]
