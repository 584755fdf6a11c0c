"""Weights shipped inside the package, and the ``package:`` checkpoint resolver.

``tiny_pretrained.pt`` (+ ``tiny_pretrained.json``, its manifest) is the tiny profile's
stand-in for the ImageNet checkpoint: the tiny Conformer pretrained on formula-driven texture
scenes by :mod:`transcam_nb.pretrain`. It is produced once, on a CPU, by::

    python -m transcam_nb pretrain --profile tiny --out runs/pretrain_tiny --ship

and the manifest records the exact command, the config and its hash, the pretext generator
version, the seed, the wall time and the final pretext metrics. tests/test_pretrain.py fails
when the pretraining config or the generator changes without the weights being regenerated.

``tiny_pretrained_grouped.pt`` (+ ``.json``) continues ``tiny_pretrained.pt`` for 100
steps with the attention-grouping loss (deep-block attention kept on tokens of the same pretext
class; :mod:`transcam_nb.pretrain`, ``group_weight``); its manifest holds the exact command
(``--init package:tiny_pretrained.pt --group-weight 1 ... --ship --ship-name tiny_pretrained_grouped``).
The two files give the book its causal contrast: same network, same pretext, with and without
object-affine attention.

``tiny_classifier_grouped.pt`` (+ ``.json``) is not a starting point but a finished classifier: the
tiny profile's recipe fine-tuned from ``tiny_pretrained_grouped.pt`` (seed 0), the contrast arm of
chapters 2 and 5. The classifier cache installs it instead of training it when, and only when, the
configuration asked for equals the one its manifest records (:mod:`transcam_nb.pipeline.shipped`,
which also says how to opt out and regenerate it: ``python scripts/ship_classifier.py``).

A profile refers to a shipped file as ``init_checkpoint="package:tiny_pretrained.pt"``;
:func:`resolve_checkpoint` turns that into a path (any other string is a plain path).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["PACKAGE_PREFIX", "WEIGHTS_DIR", "resolve_checkpoint", "read_manifest", "REGENERATE_COMMAND"]

PACKAGE_PREFIX = "package:"
WEIGHTS_DIR = Path(__file__).resolve().parent
REGENERATE_COMMAND = "python -m transcam_nb pretrain --profile {profile} --out runs/pretrain_{profile} --ship"


def resolve_checkpoint(spec: str | os.PathLike | None) -> Path | None:
    """``None`` → ``None``; ``"package:NAME"`` → ``transcam_nb/weights/NAME`` (must exist);
    anything else → ``Path(spec)`` (existence is checked by the loader)."""
    if spec is None:
        return None
    s = str(spec)
    if not s.startswith(PACKAGE_PREFIX):
        return Path(s).expanduser()
    name = s[len(PACKAGE_PREFIX):]
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"init checkpoint {s!r}: expected 'package:<file name>' naming a file in {WEIGHTS_DIR}")
    p = WEIGHTS_DIR / name
    if not p.is_file():
        stem = name.split("_pretrained")[0] if "_pretrained" in name else "tiny"
        raise FileNotFoundError(
            f"shipped weights {p} are missing (init checkpoint {s!r}); regenerate them with: "
            + REGENERATE_COMMAND.format(profile=stem))
    return p


def read_manifest(name: str = "tiny_pretrained.json") -> dict:
    """The manifest of a shipped weights file (a JSON dict)."""
    p = WEIGHTS_DIR / name
    if not p.is_file():
        raise FileNotFoundError(f"manifest {p} is missing; regenerate with: "
                                + REGENERATE_COMMAND.format(profile=name.split("_pretrained")[0]))
    return json.loads(p.read_text())
