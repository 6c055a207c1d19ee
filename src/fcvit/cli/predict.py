"""``fcvit predict``: top-5 classes for images with a trained or published checkpoint."""
from __future__ import annotations

import argparse
import json

from .options import add_device, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="classify images: top-5 classes with names",
                              description="Classify images and print the top-5 classes with their names.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model", default=None,
                   help="model name (default: the checkpoint's 'arch' when it has one, else fcvit_b12)")
    p.add_argument("--checkpoint", help="checkpoint file (.pth, .pth.tar or .safetensors)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to print per image (default 5)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def class_names_for(num_classes: int, checkpoint: dict | None = None) -> list[str]:
    """Names stored by ``fcvit train`` in the checkpoint, else ImageNet's for 1000 classes, else numbers."""
    names = (checkpoint or {}).get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return [str(n) for n in names]
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        return list(ImageNetInfo().label_descriptions())
    return [f"class {i}" for i in range(num_classes)]


def run(args: argparse.Namespace) -> int:
    import logging

    import timm
    import torch
    from timm.data import create_transform, resolve_data_config

    from ..data import load_image
    from ..engine import resolve_device
    from ..models import check_model_name, extract_state_dict, load_weights, read_checkpoint

    from .validate import stored_data_config

    if args.model is not None:
        check_model_name(args.model, allow_timm=True)
    images = [load_image(path) for path in args.images]  # fail on a bad file before the slow part
    checkpoint = None
    kwargs = {}
    if args.checkpoint:
        checkpoint = read_checkpoint(args.checkpoint)
        state_dict = extract_state_dict(checkpoint)
        if "head.weight" in state_dict:
            kwargs["num_classes"] = int(state_dict["head.weight"].shape[0])
    if args.model is None:
        arch = (checkpoint or {}).get("arch")
        args.model = check_model_name(arch, allow_timm=True) if isinstance(arch, str) else "fcvit_b12"
    model = timm.create_model(args.model, **kwargs)
    if checkpoint is not None:
        load_weights(model, state_dict, args.model)
    else:
        logging.getLogger(__name__).warning(
            "No --checkpoint given: %s has random weights, so its predictions mean nothing.", args.model)
    args.device = resolve_device(args.device)
    model.eval().to(args.device)
    # a training run's own eval settings (image size, crop, normalisation) win over the model's defaults
    transform = create_transform(**resolve_data_config(stored_data_config(checkpoint or {}), model=model))
    names = class_names_for(model.num_classes, checkpoint)
    k = min(args.topk, model.num_classes)
    results = []
    with torch.inference_mode():
        batch = torch.stack([transform(img) for img in images]).to(args.device)
        probs = model(batch).softmax(dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)
    for path, p_row, i_row in zip(args.images, top_p.tolist(), top_i.tolist()):
        results.append(dict(image=path, top=[dict(index=i, name=names[i], prob=p) for p, i in zip(p_row, i_row)]))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['prob'] * 100:6.2f}%  {t['index']:>4}  {t['name']}")
    return 0
