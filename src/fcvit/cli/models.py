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


def run(args: argparse.Namespace) -> int:
    import timm

    from ..models import MODEL_CONFIGS
    from ..tools.profile import count_gmacs, count_params

    rows = []
    for name, cfg in MODEL_CONFIGS.items():
        model = timm.create_model(name)
        rows.append(dict(model=name, params=count_params(model),
                         gmacs=round(count_gmacs(model, (3, args.img_size, args.img_size)), 3), depths=list(cfg.depths),
                         dims=list(cfg.dims), crop_pct=cfg.crop_pct, drop_path=cfg.drop_path_rate))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'params':>12} {'GMACs@' + str(args.img_size):>10}  {'blocks':<14} {'channels':<20} crop_pct")
    for r in rows:
        print(f"{r['model']:<12} {r['params']:>12,} {r['gmacs']:>10.2f}  {str(r['depths']):<14} "
              f"{str(r['dims']):<20} {r['crop_pct']}")
    return 0
