"""``python -m transcam_nb <stage> ...``: see :mod:`transcam_nb.cli`."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
