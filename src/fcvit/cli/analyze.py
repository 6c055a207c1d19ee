"""``fcvit analyze``: per-block measures of how query-dependent, head/group-diverse and sparse the maps are."""
from __future__ import annotations

import argparse
import math
import os

from .options import add_device, add_images, add_overwrite, add_weights, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze", help="measure query-irrelevance, head/group diversity and sparsity per block",
        description="Per block: how alike the attention maps of different queries and heads are, and how "
                    "concentrated (docs/analysis.md); for FCViT models, of the group similarity maps.")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    for what, text in (("attention", "ViT/DeiT attention maps (FCViT models: their group similarity maps)"),
                       ("similarity", "FCViT's group similarity maps")):
        s = sub.add_parser(what, help=text, description=f"Per-block measures of {text}.")
        add_images(s)
        model = "deit_base_patch16_224" if what == "attention" else "fcvit_b12"
        s.add_argument("--model", default=None, help=f"model name (default: the checkpoint's, else {model})")
        s.set_defaults(default_model=model)
        add_weights(s, "model")
        s.add_argument("--img-size", type=positive_int, default=224,
                       help="FCViT input: shorter side, aspect ratio kept (default 224; ViTs use their own size)")
        s.add_argument("--results-file", metavar="R.json", help="write the results as .json (everything) or .csv")
        s.add_argument("--plot", metavar="F.png", help="plot every measure over depth to this figure")
        add_overwrite(s, "an existing --results-file or --plot")
        add_device(s)
        s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..analysis import (ATTENTION_MEASURES, SIMILARITY_MEASURES, analyze_attention, analyze_similarity,
                            create_analysis_model, image_to_tensor, input_size_of, is_fcvit, is_vit,
                            model_name)
    from ..analysis.pipeline import format_table, write_results
    from ..analysis.plots import check_figure_path, draw_measures, save_figure, uniform_values
    from ..data import ImageReader, expand_image_paths
    from ..engine import resolve_device
    from ..errors import UserError
    from ..files import check_outputs

    if args.plot:
        check_figure_path(args.plot)
    if args.results_file and os.path.splitext(args.results_file)[1].lower() not in (".json", ".csv"):
        raise UserError(f"--results-file '{args.results_file}' must end in .json or .csv.")
    reader = ImageReader(expand_image_paths(args.images))  # missing and non-image files: before the model
    check_outputs([p for p in (args.plot, args.results_file) if p], reader.paths, overwrite=args.overwrite,
                  choose="choose another --plot or --results-file", input_name="input image")
    args.model = model_name(args.model, args.checkpoint, args.default_model)
    model, weights = create_analysis_model(args.model, checkpoint=args.checkpoint, pretrained=args.pretrained)
    args.device = resolve_device(args.device)
    size = input_size_of(model.to(args.device), args.img_size)

    sizes = []  # (height, width) of each input: the uniform baselines depend on the number of positions

    def to_input(image):
        sizes.append(input_size_of(model, args.img_size, image.size))
        return image_to_tensor(image, model, sizes[-1]).to(args.device)

    # one image at a time, decoded when needed, so that thousands of photographs fit in memory
    progress = tqdm(reader, desc="images", unit="img", total=len(reader.paths), disable=len(reader.paths) < 10)
    inputs = (to_input(image) for _, image in progress)
    with torch.no_grad():  # scoped: the command also runs inside other programs and tests
        if is_fcvit(model):
            kind, measures = "similarity", SIMILARITY_MEASURES
            rows = analyze_similarity(model, inputs)
        elif args.what == "similarity":
            raise UserError(f"{args.model} is not an FCViT model: use `fcvit analyze attention` for ViT/DeiT models.")
        elif is_vit(model):
            kind, measures = "attention", ATTENTION_MEASURES
            rows = analyze_attention(model, inputs)
        else:
            raise UserError(f"{args.model} is neither an FCViT nor one of timm's ViT/DeiT models: "
                            "choose one of those.")
    paths = reader.processed
    names = [m for m in measures if any(m in r for r in rows)]
    at = (f"shorter side {args.img_size}, aspect ratio kept" if kind == "similarity" else f"{size[1]}x{size[0]}")
    print(f"{args.model} ({weights}), {len(paths)} image(s) at {at}, {kind} maps:")
    print(format_table(rows, names))
    payload = dict(
        model=args.model, weights=weights, kind=kind, images=paths,
        input_size=list(size) if kind == "attention" else dict(shorter_side=args.img_size, aspect_ratio="kept"),
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)) if kind == "attention" else 0,
        measures={m: measures[m] for m in names}, blocks=rows)
    if args.results_file:
        print(write_results(args.results_file, payload, names))
    if args.plot:
        if kind == "attention":  # one patch grid; FCViT's stage s maps have 1/(4 * 2^s) of each input's sides
            base = [uniform_values(math.prod(model.patch_embed.grid_size), model.num_prefix_tokens)] * len(rows)
        else:
            base = []
            for r in rows:
                each = [uniform_values(h * w // (4 << r["stage"]) ** 2) for h, w in sizes]
                base.append({m: sum(v[m] for v in each) / len(each) for m in each[0]})
        fig = draw_measures(rows, names, title=f"{args.model} ({weights}): {kind} maps over depth, "
                                               f"mean of {len(paths)} image(s)", baselines=base)
        print(save_figure(fig, args.plot))
    return reader.exit_status()
