"""Models: the Conformer family and the TransCAM network.

``create_model(name, *, num_classes=None, checkpoint=None, **overrides)`` builds one of

========================== =====================================================================
``conformer_tiny_patch16``  official ImageNet Conformer-Ti (23,524,704 parameters at 1000 classes)
``conformer_small_patch16`` official Conformer-S (37,673,424)
``conformer_small_patch32`` official Conformer-S/32 (detection backbone)
``conformer_base_patch16``  official Conformer-B (83,289,136)
``transcam_tiny``           TransCAM network on Conformer-Ti (authors' ``Net_ti``, 21 outputs)
``transcam_small``          TransCAM network on Conformer-S (authors' ``Net_sm``, the paper's model)
``transcam_base``           TransCAM network on Conformer-B (authors' ``Net_bs``)
========================== =====================================================================

The same names are registered in timm's model registry on import, so
``timm.create_model("transcam_small", num_classes=21)`` works after ``import transcam_nb``.
"""
from __future__ import annotations

from .checkpoints import CheckpointError, load_checkpoint, read_state_dict
from .conformer import CONFIGS, Conformer, ConformerOutput, build_conformer

__all__ = ["create_model", "list_models", "Conformer", "ConformerOutput", "CONFIGS", "CheckpointError",
           "load_checkpoint", "read_state_dict", "count_parameters", "batchnorm_eval"]


def create_model(name: str, *, num_classes: int | None = None, checkpoint=None, **overrides) -> Conformer:
    """Build the named model, optionally loading ``checkpoint`` (a path or a state_dict).

    ``overrides`` change constructor arguments (``embed_dim``, ``num_heads``, ``channel_ratio``,
    ``depth``, ``patch_size``, ``drop_path_rate``, …) to build smaller members of the same class.
    Heads of another shape in the checkpoint are dropped (fine-tuning start); any other
    mismatch raises :class:`CheckpointError`.
    """
    model = build_conformer(name, num_classes=num_classes, **overrides)
    model.default_cfg_name = name
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def batchnorm_eval(module) -> None:
    """Put every BatchNorm layer under ``module`` in eval mode (frozen running statistics), as the
    reference's AffinityNet and DeepLab do with their backbones after ``.train()``."""
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def list_models() -> list[str]:
    return sorted(CONFIGS)


def count_parameters(model) -> int:
    """Number of parameter elements (BN running statistics excluded), as in the paper's Table 7."""
    return sum(p.numel() for p in model.parameters())


def _register_timm() -> None:
    try:
        from timm.models import register_model
        from timm.models._registry import _model_entrypoints  # noqa: F401
    except Exception:  # pragma: no cover - timm is a hard dependency
        return
    import timm

    for _name in CONFIGS:
        if _name in timm.list_models(_name):
            continue

        def _fn(pretrained=False, *, _name=_name, **kwargs):
            if pretrained:
                raise ValueError(f"{_name}: no weights can be downloaded; pass checkpoint=<file> to "
                                 "transcam_nb.create_model or load_checkpoint(model, file)")
            for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(k, None)
            return create_model(_name, **kwargs)

        _fn.__name__ = _name
        _fn.__module__ = __name__
        register_model(_fn)


_register_timm()
