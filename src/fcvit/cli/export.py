"""``fcvit export``: a model and its checkpoint as ONNX, TorchScript or safetensors, checked after writing."""
from __future__ import annotations

import argparse
import logging

from .options import add_overwrite, positive_int

_logger = logging.getLogger(__name__)

TOLERANCE = 1e-4


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export to ONNX (dynamic batch and size), TorchScript or safetensors",
        description="Export a model with its checkpoint to ONNX (dynamic batch and image size), TorchScript or "
                    "safetensors, then check that the file gives PyTorch's outputs (to 1e-4).")
    p.add_argument("--model", default="fcvit_tiny", help="model name (default fcvit_tiny)")
    p.add_argument("--checkpoint", help="checkpoint file; without one the random initial weights are exported")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"], dest="fmt",
                   help="output format")
    p.add_argument("--output", "-o", help="output file (default MODEL.onnx, MODEL.pt or MODEL.safetensors)")
    add_overwrite(p, "an existing output file")
    p.add_argument("--fuse", action="store_true",
                   help="fold BatchNorms, layer scales and norm affines first (fcvit.fuse; ONNX and TorchScript)")
    p.add_argument("--img-size", type=positive_int, default=224, help="input side used to trace and check (default 224)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip comparing the exported file with PyTorch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UserError
    from ..files import check_outputs, replaced_note
    from ..tools.export import (check_onnx, check_torchscript, default_suffix, export_onnx, export_safetensors,
                                export_torchscript)
    from ..models import create_classifier
    from ..models.fuse import fuse

    if args.fuse and args.fmt == "safetensors":
        raise UserError("--fuse changes the weights' names so no model could load them: export safetensors "
                        "without --fuse (fuse after loading with fcvit.fuse).")
    if args.img_size < 32:
        raise UserError(f"--img-size {args.img_size} is too small: FCViT downsamples by 32, use at least 32.")
    output = args.output or f"{args.model}{default_suffix(args.fmt)}"
    replaced = check_outputs([output], [args.checkpoint] if args.checkpoint else [], args.overwrite,
                             choose="choose another --output", input_name="checkpoint")
    model = create_classifier(args.model, checkpoint_path=args.checkpoint).eval()
    if args.checkpoint is None:
        _logger.warning("No --checkpoint given: exporting %s with its random initial weights.", args.model)
    model = fuse(model) if args.fuse else model
    if args.fmt == "onnx":
        export_onnx(model, output, img_size=args.img_size, opset=args.opset)
    elif args.fmt == "torchscript":
        export_torchscript(model, output)
    else:
        export_safetensors(model, output, metadata={"arch": args.model, "format": "pt"})
    print(f"wrote {output}")
    if replaced:
        print(replaced_note(replaced))
    if not args.no_check and args.fmt != "safetensors":
        inputs = torch.randn(2, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
        check = check_onnx if args.fmt == "onnx" else check_torchscript
        diff = check(model, output, inputs)
        verdict = "ok" if diff <= TOLERANCE else "MISMATCH"
        print(f"check: batch 2 (exported with batch 1), max |difference| to PyTorch {diff:.2e} ({verdict})")
        if diff > TOLERANCE:
            raise UserError(f"The exported file differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}): "
                            f"try another --opset or report the model and versions.")
    return 0
