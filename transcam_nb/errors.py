"""The one error type that means "bad input": what a user gave is missing, unreadable or malformed.

Library functions raise a subclass of :class:`InputError` (it is a ``ValueError``, so code that
catches ``ValueError`` keeps working) when the problem lies in their arguments or files rather
than in the code: an unknown setting, a checkpoint that does not fit, a dataset folder without
the expected files, a pipeline folder made with other settings. The command line
(:func:`transcam_nb.cli.main`) answers these, and missing files (``FileNotFoundError`` and its
``OSError`` siblings), with one line on stderr and exit status 2; any other exception is a bug
and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input: the message names the file or argument and what was expected."""
