"""``fcvit predict``: top-5 classes for images with a trained or published checkpoint."""
from __future__ import annotations

import argparse
import json
from itertools import islice
from typing import Callable

from .options import add_device, positive_int

BATCH = 32  # images decoded and classified at a time, so a folder of thousands fits in memory
EXIT_STATUS_HELP = ("An image that cannot be read is reported (one line naming it and why) and skipped; the exit "
                    "status is 0 when every image was processed and 1 when some were skipped.")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="classify images: top-5 classes with names",
                              description="Classify images and print the top-5 classes with their names. "
                                          f"{EXIT_STATUS_HELP}")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--model", default=None,
                   help="model name (default: the checkpoint's, else its weights' variant, else fcvit_b12)")
    p.add_argument("--checkpoint", help="checkpoint file (.pth, .pth.tar, .safetensors) or hub folder (fcvit convert)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to print per image (default 5)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def class_names_for(num_classes: int, checkpoint: dict | None = None,
                    default: Callable[[int], list[str]] | None = None) -> list[str]:
    """Names stored by training in the checkpoint, else ``default(num_classes)``: by default ImageNet's for 1000
    classes, else numbers."""
    names = (checkpoint or {}).get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    if default is not None:
        return default(num_classes)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        return list(ImageNetInfo().label_descriptions())
    return [f"class {i}" for i in range(num_classes)]


def run(args: argparse.Namespace) -> int:
    import logging

    import torch
    from timm.data import create_transform, resolve_data_config

    from ..data import ImageReader, expand_image_paths
    from ..engine import resolve_device
    from ..models import check_model_name, create_classifier, read_checkpoint

    from .validate import stored_data_config

    if args.model is not None:
        check_model_name(args.model, allow_timm=True)
    reader = ImageReader(expand_image_paths(args.images))  # missing and non-image files fail before the slow part
    checkpoint = read_checkpoint(args.checkpoint) if args.checkpoint else None
    model = create_classifier(args.model, args.checkpoint, checkpoint=checkpoint)
    if checkpoint is None:
        logging.getLogger(__name__).warning("No --checkpoint given: %s has random weights, so its predictions mean "
                                            "nothing.", args.model or "fcvit_b12")
    args.device = resolve_device(args.device)
    model.eval().to(args.device)
    # a training run's own eval settings (image size, crop, normalisation) win over the model's defaults
    transform = create_transform(**resolve_data_config(stored_data_config(checkpoint or {}), model=model))
    names = class_names_for(model.num_classes, checkpoint)
    k = min(args.topk, model.num_classes)
    results = []
    images = iter(reader)
    for chunk in iter(lambda: list(islice(images, BATCH)), []):
        with torch.inference_mode():
            batch = torch.stack([transform(img) for _, img in chunk]).to(args.device)
            top_p, top_i = model(batch).softmax(dim=-1).topk(k, dim=-1)
        for (path, _), p_row, i_row in zip(chunk, top_p.tolist(), top_i.tolist()):
            result = dict(image=path, top=[dict(index=i, name=names[i], prob=p) for p, i in zip(p_row, i_row)])
            results.append(result)
            if not args.json:  # printed as they come, so a long folder shows progress
                print(path)
                for t in result["top"]:
                    print(f"  {t['prob'] * 100:6.2f}%  {t['index']:>4}  {t['name']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return reader.exit_status()

