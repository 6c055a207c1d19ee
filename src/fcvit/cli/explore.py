"""``fcvit explore``: one HTML page to move the query over a photo and watch ViT attention and FCViT's maps."""
from __future__ import annotations

import argparse
import os

from .options import add_device, add_overwrite


def _blocks(text: str) -> list:
    try:
        return [int(b) for b in text.replace(" ", "").split(",") if b]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected block indices such as 0,5,-1, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explore", help="an interactive HTML page: ViT attention per query beside FCViT's group maps",
        description="Write ONE self-contained HTML file (no server, no network): hover or click a patch of the photo "
                    "to make it the query and watch the ViT's attention map of that query, beside FCViT's group "
                    "similarity maps and the measures of 'fcvit analyze' (the paper's Figures 1 and 3).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photographs to embed (one page, a selector between them)")
    p.add_argument("--vit", default=None, metavar="MODEL",
                   help="timm ViT/DeiT model (default: the --vit-checkpoint's, else deit_base_patch16_224)")
    p.add_argument("--vit-checkpoint", metavar="FILE", help="local ViT/DeiT checkpoint")
    p.add_argument("--vit-pretrained", action="store_true", help="ViT/DeiT weights from timm's hub (needs a network)")
    p.add_argument("--fcvit", default=None, metavar="MODEL",
                   help="FCViT model (default: the --fcvit-checkpoint's, else fcvit_b12)")
    p.add_argument("--fcvit-checkpoint", metavar="FILE", help="local FCViT checkpoint")
    p.add_argument("--fcvit-pretrained", action="store_true", help="FCViT weights from a hub config (needs a network)")
    p.add_argument("--blocks", type=_blocks, default=None, metavar="I,J",
                   help="ViT blocks to embed (default all; each adds about 0.7 MB per image for DeiT-Base)")
    p.add_argument("--fcvit-blocks", type=_blocks, default=None, metavar="I,J", help="FCViT blocks to embed (default all)")
    p.add_argument("--output", "-o", required=True, metavar="PAGE.html", help="the page to write (.html)")
    add_overwrite(p, "an existing page")
    add_device(p)
    p.set_defaults(func=run_explore)


def run_explore(args: argparse.Namespace) -> int:
    from ..analysis import model_name
    from ..analysis.explore import explore_page
    from ..data import load_image
    from ..engine import resolve_device
    from ..errors import UserError
    from ..files import atomic_write, check_outputs
    from .visualize import _load

    if not args.output.lower().endswith((".html", ".htm")):
        raise UserError(f"--output '{args.output}' must end in .html: the page is one HTML file.")
    check_outputs([args.output], args.images, args.overwrite, "choose another -o", "input image")
    args.device = resolve_device(args.device)
    args.vit = model_name(args.vit, args.vit_checkpoint, "deit_base_patch16_224")
    args.fcvit = model_name(args.fcvit, args.fcvit_checkpoint, "fcvit_b12")
    images = [(os.path.basename(path), load_image(path)) for path in args.images]
    vit, vit_weights = _load(args, args.vit, "vit_")
    fcvit, fcvit_weights = _load(args, args.fcvit, "fcvit_")
    html = explore_page(images, vit, args.vit, vit_weights, fcvit, args.fcvit, fcvit_weights,
                        vit_blocks=args.blocks, fcvit_blocks=args.fcvit_blocks)
    atomic_write(args.output, html)
    print(f"{args.output} ({len(html.encode()) / 2 ** 20:.1f} MB, {len(images)} image(s))")
    return 0
