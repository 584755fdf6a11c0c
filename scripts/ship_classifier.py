"""Write a finished classifier into the package (transcam_nb/weights/<name>.{pt,json}) so the
book installs it instead of training it (transcam_nb.pipeline.shipped explains the design).

    # the book's contrast arm (chapters 2 and 5): trains it through the classifier cache
    # (about 12 minutes on 2 CPU cores), or loads it when the cache holds it finished
    python scripts/ship_classifier.py --profile tiny --init package:tiny_pretrained_grouped.pt --name tiny_classifier_grouped

    # copy a finished run instead (its spec.json must equal what this checkout computes)
    python scripts/ship_classifier.py --profile tiny --init package:tiny_pretrained_grouped.pt \
        --name tiny_classifier_grouped --from artifacts/classifier-tiny-init-1a4a75f35e

Run it from the checkout whose code the weights are for; tests/test_shipped_classifier.py
fails when the code's spec and the shipped manifest part.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="tiny", help="profile name (default: tiny)")
    ap.add_argument("--init", required=True, help="initial weights, e.g. package:tiny_pretrained_grouped.pt")
    ap.add_argument("--name", default=None, help="file stem in transcam_nb/weights (default: from --init)")
    ap.add_argument("--from", dest="run_dir", default=None, help="a finished classifier run folder to copy")
    ap.add_argument("--dest", default=None, help="another folder than transcam_nb/weights (for tests)")
    args = ap.parse_args(argv)

    import torch

    from transcam_nb.config import get_profile
    from transcam_nb.errors import InputError
    from transcam_nb.pipeline.classifier import cached_classifier, classifier_spec
    from transcam_nb.pipeline.seeds import machine_id
    from transcam_nb.pipeline.shipped import write_shipped

    torch.set_num_threads(1)
    try:
        profile = get_profile(args.profile)
        _, spec, run_name = classifier_spec(profile, init=args.init)
        run_dir = args.run_dir
        if run_dir is None:  # train it (or load it finished from the cache), never from a shipped copy
            _, run_dir = cached_classifier(profile, init=args.init, shipped=False, progress=True)
        pt, js = write_shipped(run_dir, spec=spec, run_name=run_name, machine=machine_id(), name=args.name,
                               request={"profile": args.profile, "init": args.init}, folder=args.dest)
    except (InputError, OSError) as e:
        print(f"ship_classifier: {e}", file=sys.stderr)
        return 2
    print(f"wrote {pt} ({pt.stat().st_size / 2**20:.1f} MiB) and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
