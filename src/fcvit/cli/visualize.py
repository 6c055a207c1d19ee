"""``fcvit visualize``: FCViT's group similarity maps, ViT attention maps per query, and both side by side."""
from __future__ import annotations

import argparse
import logging
from typing import Any, Optional

from .options import _checked, add_device, add_overwrite, add_seed, add_weights, positive_int


def _add_model(p: argparse.ArgumentParser, default: str, what: str) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--model", default=None, help=f"{what} model name (default: the checkpoint's, else {default})")
    p.set_defaults(default_model=default)
    add_weights(p, what)


def _add_queries(p: argparse.ArgumentParser, default_random: int) -> None:
    p.add_argument("--query", action="extend", nargs="+", default=[], metavar="X,Y",
                   help="query points in pixels of the image (0,0 top left); several allowed")
    p.add_argument("--random-queries", type=positive_int, default=None, metavar="K",
                   help=f"K random query patches (default {default_random} when no --query is given)")
    add_seed(p, "seed of the random queries")


def _add_figure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", required=True, metavar="F.png", help="figure file (.png, .pdf, .svg)")
    add_overwrite(p, "an existing figure")
    add_device(p)
    p.add_argument("--dpi", type=_checked(int, "a whole number from 10 to 1200", 10, 1200), default=100,
                   help="figure resolution in dots per inch, 10 to 1200 (default 100)")


def _add_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=("map", "figure"), default="map",
                   help="colours of the attention maps: map (default), each from its own minimum to its maximum, as "
                        "the paper's normalized attention maps; figure, one scale from 0 to the largest weight")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "visualize", help="draw FCViT similarity maps and ViT attention maps on an image",
        description="Draw what the models look at: FCViT's token-global similarity maps (one per group), "
                    "ViT/DeiT attention maps per query point, or both side by side (Figure 3 of the paper).")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    img_size = ("shorter side the image is resized to, keeping its aspect ratio (default: the checkpoint's training "
                "size, else 224)")

    s = sub.add_parser("similarity", help="the 8 group maps of both global-context modules of an FCViT block",
                       description="The image and the group similarity maps of gc1 and gc2 of one FCViT block.")
    _add_model(s, "fcvit_b12", "FCViT")
    s.add_argument("--block", type=int, default=-1, help="block index over the whole network (default -1, the last)")
    s.add_argument("--img-size", type=positive_int, help=img_size)
    _add_figure(s)
    s.set_defaults(func=run_similarity)

    a = sub.add_parser("attention", help="ViT/DeiT attention maps of query points",
                       description="For each query point: the image with the point marked and its attention "
                                   "map over the patch grid (class/distillation tokens left out and reported).")
    _add_model(a, "deit_base_patch16_224", "ViT/DeiT")
    _add_queries(a, default_random=4)
    a.add_argument("--block", type=int, default=-1, help="block index (default -1, the last)")
    a.add_argument("--head", default="mean", help="mean (default), all (one column per head) or a head index")
    _add_scale(a)
    _add_figure(a)
    a.set_defaults(func=run_attention)

    c = sub.add_parser("compare", help="ViT attention per query and FCViT group maps side by side",
                       description="Figure 3 of the paper for any image: ViT attention maps of several query "
                                   "points above FCViT's group similarity maps.")
    c.add_argument("image", metavar="IMAGE")
    for prefix, what, default in (("fcvit", "FCViT", "fcvit_b12"), ("vit", "ViT/DeiT", "deit_base_patch16_224")):
        c.add_argument(f"--{prefix}", default=None, metavar="MODEL",
                       help=f"{what} model (default: the --{prefix}-checkpoint's, else {default})")
        add_weights(c, what, prefix)
    _add_queries(c, default_random=8)
    c.add_argument("--block", type=int, default=-1, help="FCViT block (default -1)")
    c.add_argument("--vit-block", type=int, default=-1, help="ViT block (default -1)")
    c.add_argument("--module", choices=("gc1", "gc2"), default="gc2", help="FCViT global-context module (default gc2)")
    c.add_argument("--img-size", type=positive_int, help="FCViT input: " + img_size)
    _add_scale(c)
    _add_figure(c)
    c.set_defaults(func=run_compare)


def _model_names(args: argparse.Namespace) -> None:
    """Models not named on the command line: the checkpoint's, else the command's default."""
    from ..analysis import model_name

    if "default_model" in args:
        args.model = model_name(args.model, args.checkpoint, args.default_model)
    else:
        args.fcvit = model_name(args.fcvit, args.fcvit_checkpoint, "fcvit_b12")
        args.vit = model_name(args.vit, args.vit_checkpoint, "deit_base_patch16_224")


def _open_image(args: argparse.Namespace) -> Any:
    """The models' names, then the image once the figure path is known to be writable."""
    from ..analysis.plots import check_figure_path
    from ..data import load_image
    from ..engine import resolve_device
    from ..files import check_outputs

    _model_names(args)
    args.device = resolve_device(args.device)
    check_figure_path(args.output)
    check_outputs([args.output], [args.image], args.overwrite, "choose another -o", "input image")
    return load_image(args.image)


def _load(args, name: str, prefix: str):
    """The model and its weights' phrase from ``--PREFIXcheckpoint``/``--PREFIXpretrained`` (prefix 'vit_'...)."""
    from ..analysis import create_analysis_model

    model, weights = create_analysis_model(name, checkpoint=getattr(args, f"{prefix}checkpoint"),
                                           pretrained=getattr(args, f"{prefix}pretrained"),
                                           flag="--" + prefix.replace("_", "-"))
    return model.to(args.device), weights


def _trained_side(checkpoint: Optional[str]) -> Optional[int]:
    """The shorter input side the checkpoint's training run stored (``data_config``, else ``args.img_size``)."""
    from ..analysis.loading import read_once
    from ..models.checkpoint import checkpoint_args
    from .validate import stored_data_config

    stored = read_once(checkpoint) if checkpoint else {}
    size = stored_data_config(stored).get("input_size", [None, checkpoint_args(stored).get("img_size")])[1:]
    return min(size) if size and all(isinstance(v, int) for v in size) else None


def _fcvit_maps(args, name: str, image, prefix: str = ""):
    from ..analysis import fcvit_similarity, image_to_tensor, input_size_of

    model, weights = _load(args, name, prefix)
    side = args.img_size or _trained_side(getattr(args, f"{prefix}checkpoint"))
    if side and not args.img_size:
        logging.getLogger(__name__).info("FCViT input: shorter side %d, the checkpoint's training size "
                                         "(--img-size to change).", side)
    x = image_to_tensor(image, model, input_size_of(model, side, image.size)).to(args.device)
    block, maps = fcvit_similarity(model, x, args.block)
    return block, {k: v[0].cpu() for k, v in maps.items()}, weights


def _query_points(args, default_random: int):
    """The --query points and the number of random queries, checked before any model is built."""
    from ..analysis.pipeline import parse_query
    from ..errors import UserError

    points = [parse_query(q) for q in args.query]
    k = args.random_queries if args.random_queries is not None else (0 if points else default_random)
    if not points and not k:
        raise UserError("No query points: give --query X,Y (pixels) or --random-queries K.")
    return points, k


def _vit_maps(args, name: str, image, block_arg: int, head, points, k, prefix: str = ""):
    from ..analysis import ViTAttention, image_to_tensor, input_size_of, query_attention

    model, weights = _load(args, name, prefix)
    reader = ViTAttention(model, blocks=[block_arg])
    x = image_to_tensor(image, model, input_size_of(model)).to(args.device)
    points, maps, labels, prefix = query_attention(reader, x, reader.blocks[0], image.size, points, k, head, args.seed)
    return reader.blocks[0], points, [m.cpu() for m in maps], labels, prefix, weights


def run_similarity(args: argparse.Namespace) -> int:
    from ..analysis.plots import display_image, draw_similarity, save_figure

    image = _open_image(args)
    block, maps, weights = _fcvit_maps(args, args.model, image)
    fig = draw_similarity(display_image(image), maps,
                          title=f"{args.model}, block {block}: token-global similarity per group — weights: {weights}")
    print(save_figure(fig, args.output, dpi=args.dpi))
    return 0


def _note_uniform(maps, scale: str) -> None:
    from ..analysis.plots import NEAR_UNIFORM, spread

    value = spread([m for query in maps for m in query])
    if value < NEAR_UNIFORM:
        logging.getLogger(__name__).warning(
            "The attention maps are nearly uniform (max - min at most %.0f%% of the mean)%s.", 100 * value,
            ": drawn each from its own minimum to its maximum (--scale map)" if scale == "map" else
            ", one flat colour with --scale figure: --scale map shows their structure")


def _scale_points(points, image, shown):  # image pixels to the pixels of the image drawn
    sx, sy = shown.shape[1] / image.width, shown.shape[0] / image.height
    return [(x * sx, y * sy) for x, y in points]


def run_attention(args: argparse.Namespace) -> int:
    from ..analysis.pipeline import parse_head
    from ..analysis.plots import display_image, draw_attention, save_figure

    head = parse_head(args.head)
    points, k = _query_points(args, default_random=4)
    image = _open_image(args)
    block, points, maps, labels, prefix, weights = _vit_maps(args, args.model, image, args.block, head, points, k)
    shown = display_image(image)
    title = f"{args.model}, block {block}: attention of each query over the patches — weights: {weights}"
    if prefix:
        title += f"\n({prefix * 100:.0f}% of these queries' attention goes to class/distillation tokens, not drawn)"
    _note_uniform(maps, args.scale)
    fig = draw_attention(shown, _scale_points(points, image, shown), maps, labels, title=title, scale=args.scale)
    print(save_figure(fig, args.output, dpi=args.dpi))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.plots import display_image, draw_compare, save_figure

    points, k = _query_points(args, default_random=8)
    image = _open_image(args)
    vit_block, points, maps, _, _, vit_weights = _vit_maps(args, args.vit, image, args.vit_block, "mean", points, k,
                                                           "vit_")
    fc_block, fc_maps, fc_weights = _fcvit_maps(args, args.fcvit, image, "fcvit_")
    _note_uniform(maps, args.scale)
    shown = display_image(image)
    fig = draw_compare(
        shown, _scale_points(points, image, shown), torch.cat(maps), fc_maps[args.module],
        vit_label=f"ViT attention per query\n(block {vit_block})",
        fcvit_label=f"FCViT {args.module} similarity\nper group (block {fc_block})",
        title=f"top: {args.vit} ({vit_weights}); bottom: {args.fcvit} ({fc_weights})", scale=args.scale)
    print(save_figure(fig, args.output, dpi=args.dpi))
    return 0
