"""transcam_nb: the helper module of the executable TransCAM book.

Importing the package registers the Conformer / TransCAM model names in timm's registry, so
``timm.create_model("transcam_small", num_classes=21)`` works after ``import transcam_nb``.
"""
__version__ = "0.1.0"

import logging as _logging

# progress messages ([cached], [compute], [pipeline], ...) go to the "transcam_nb" logger; the
# command line shows them at INFO, a notebook silences them with
# logging.getLogger("transcam_nb").setLevel(logging.WARNING)
_logging.getLogger("transcam_nb").addHandler(_logging.NullHandler())

from .config import Profile, get_profile  # noqa: E402,F401
from . import models  # noqa: E402,F401  (registers the timm names)
from .models import create_model  # noqa: E402,F401
