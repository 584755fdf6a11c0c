"""Issue 11 experiments: grouped pretraining -> fine-tuning with a transformer lr multiplier ->
every refinement variant (+ the CLIP-ES-style affinity and its ingredient ablation) and the
attention diagnostic. Results are JSON files; the lab log is benchmarks/results/issue11_log.md.

    # attention diagnostic of a (pretext or fine-tuned) checkpoint on val 200
    python benchmarks/issue11_experiments.py attn --weights package:tiny_pretrained.pt --json OUT.json
    # fine-tune the tiny classifier from WEIGHTS with transformer lr multiplier M
    python benchmarks/issue11_experiments.py finetune --init WEIGHTS --mult 0 --out DIR [--seed S] [--precision bf16] \
        [--set refined_loss=1 --set refined_noise=1]
    # score the variants: val images 0-199 (report), or train images 200-399 (choosing settings)
    python benchmarks/issue11_experiments.py evaluate --run DIR --split train --start 200 --limit 200 --json OUT.json

One thread (torch.set_num_threads(1)); the tiny profile's scales (96, 128, 160) + flip.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _model_from(weights, profile):
    from transcam_nb.models import create_model, load_checkpoint
    from transcam_nb.models.checkpoints import read_state_dict
    from transcam_nb.weights import resolve_checkpoint

    sd = read_state_dict(resolve_checkpoint(weights))
    n_out = int(sd["trans_cls_head.weight"].shape[0]) if "trans_cls_head.weight" in sd else profile.num_fg + 1
    kw = dict(profile.model_overrides)
    kw["drop_path_rate"] = 0.0
    model = create_model(profile.model, num_classes=n_out, **kw)
    load_checkpoint(model, sd, drop_mismatched_heads=False)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attn")
    a.add_argument("--weights", required=True)
    a.add_argument("--limit", type=int, default=200)
    a.add_argument("--json", required=True)
    f = sub.add_parser("finetune")
    f.add_argument("--init", required=True)
    f.add_argument("--mult", type=float, required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--steps", type=int, default=None)
    f.add_argument("--precision", default="fp32")
    f.add_argument("--channels-last", action="store_true")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another profile field, e.g. refined_loss=1 (repeatable)")
    e = sub.add_parser("evaluate")
    e.add_argument("--run", required=True, help="a finetune folder (classifier.pt) or a weights file")
    e.add_argument("--split", default="val")
    e.add_argument("--start", type=int, default=0)
    e.add_argument("--limit", type=int, default=200)
    e.add_argument("--json", required=True)
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    from transcam_nb.config import get_profile
    from transcam_nb.data.roots import resolve_data_root

    prof = get_profile("tiny")
    t0 = time.perf_counter()
    if args.cmd == "attn":
        from transcam_nb.diagnostics import attention_diagnostic

        root = resolve_data_root(prof, progress=False)
        res = {"weights": args.weights, "attention": attention_diagnostic(_model_from(args.weights, prof), root, "val",
                                                                          limit=args.limit, progress=False)}
    elif args.cmd == "finetune":
        from transcam_nb.train import train_classifier

        from transcam_nb.overrides import parse_overrides

        over = dict(trans_lr_mult=args.mult, seed=args.seed, precision=args.precision, channels_last=args.channels_last)
        over.update(parse_overrides(args.set))
        summ = train_classifier("tiny", args.out, init=args.init, max_steps=args.steps, progress=False, **over)
        res = {"summary": {k: v for k, v in summ.items() if k != "eval"}, "eval": summ.get("eval")}
    else:
        from transcam_nb.diagnostics import VARIANTS, evaluate_refinements, format_summary
        from transcam_nb.refine import ABLATION_VARIANTS

        root = resolve_data_root(prof, progress=False)
        run = Path(args.run)
        weights = run / "classifier.pt" if run.is_dir() else args.run
        model = _model_from(weights, prof)
        res = evaluate_refinements(model, root, args.split, scales=tuple(prof.scales), fixed_taus=(0.25, 0.3),
                                   limit=args.limit, start=args.start, progress=False,
                                   variants=tuple(VARIANTS) + tuple(ABLATION_VARIANTS))
        res["variants"] = {k: {kk: vv for kk, vv in v.items() if kk != "curve"} | {"curve": v["curve"]}
                           for k, v in res["variants"].items()}
        print(format_summary(res))
    res["seconds_total"] = round(time.perf_counter() - t0, 1)
    res["argv"] = sys.argv
    Path(args.json if hasattr(args, "json") else Path(args.out) / "issue11.json").write_text(json.dumps(res, indent=1))
    if args.cmd == "attn":
        at = res["attention"]
        print("obj→own " + " ".join(f"{v:.2f}" for v in at["obj_to_own"]) + f" (uniform {at['obj_to_own_uniform']:.2f})")
        print("bg→bg   " + " ".join(f"{v:.2f}" for v in at["bg_to_bg"]) + f" (uniform {at['bg_to_bg_uniform']:.2f})")
    print(f"[{args.cmd}] {res['seconds_total']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
