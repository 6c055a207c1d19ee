"""``fcvit models``: the FCViT variants with their size, cost and preprocessing."""
from __future__ import annotations

import argparse
import json

from .options import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the FCViT variants with parameters and GMACs",
                              description="List the FCViT variants with parameters and GMACs at 224x224.")
    p.add_argument("--img-size", type=positive_int, default=224, help="input side for the GMACs (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


#: (parameters, GMACs at 224 x 224) as fcvit.tools.profile counts them (tests/test_logs_figures.py checks them)
AT_224 = {"fcvit_tiny": (4_784_752, 0.9), "fcvit_b12": (14_701_832, 2.643), "fcvit_b24": (26_960_232, 5.055),
          "fcvit_b48": (51_477_032, 9.877)}


def run(args: argparse.Namespace) -> int:
    from ..models.configs import MODEL_CONFIGS

    rows = []
    for name, cfg in MODEL_CONFIGS.items():
        params, gmacs = AT_224[name]
        if args.img_size != 224:  # counted: building the model takes seconds (the table answers at once)
            import timm

            from ..tools.profile import count_gmacs

            gmacs = round(count_gmacs(timm.create_model(name), (3, args.img_size, args.img_size)), 3)
        rows.append(dict(model=name, params=params, gmacs=gmacs, depths=list(cfg.depths),
                         dims=list(cfg.dims), crop_pct=cfg.crop_pct, drop_path=cfg.drop_path_rate))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'params':>12} {'GMACs@' + str(args.img_size):>10}  {'blocks':<14} {'channels':<20} crop_pct")
    for r in rows:
        print(f"{r['model']:<12} {r['params']:>12,} {r['gmacs']:>10.2f}  {str(r['depths']):<14} "
              f"{str(r['dims']):<20} {r['crop_pct']}")
    return 0
