"""``fcvit export``: a model and its checkpoint as ONNX, TorchScript or safetensors, checked after writing."""
from __future__ import annotations

import argparse
import logging

from .options import _checked, add_overwrite, positive_int

_logger = logging.getLogger(__name__)

TOLERANCE = 1e-4


def onnx_opset(text: str) -> int:
    """An opset the installed torch.onnx writes (9 to 20 where torch does not say), from 9: FCViT's GELU is Erf."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as high
    except ImportError:
        high = 20
    return _checked(int, f"a whole number from 9 to {high}", 9, high)(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export to ONNX (dynamic batch and size), TorchScript or safetensors",
        description="Export a model with its checkpoint to ONNX (dynamic batch and image size, or fixed with "
                    "--static; preprocessing and class names in its metadata), TorchScript or safetensors, then "
                    "check that the file gives PyTorch's outputs (to 1e-4).")
    p.add_argument("--model", help="model name (default: the checkpoint's, else its weights' variant, else fcvit_tiny)")
    p.add_argument("--checkpoint", help="checkpoint file or hub folder (fcvit convert); without one the random initial "
                                        "weights are exported")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"], dest="fmt",
                   help="output format")
    p.add_argument("--output", "-o", help="output file (default MODEL.onnx, MODEL.pt or MODEL.safetensors)")
    add_overwrite(p, "an existing output file")
    p.add_argument("--fuse", action="store_true",
                   help="fold BatchNorms, layer scales and norm affines first (fcvit.fuse; ONNX and TorchScript)")
    p.add_argument("--img-size", type=positive_int, default=224,
                   help="input side used to trace and check, the fixed side with --static (default 224)")
    p.add_argument("--opset", type=onnx_opset, default=None,
                   help="ONNX opset, 9 to torch's newest (default 20: GELU is one operator from 20, the one-group "
                        "GroupNorms LayerNormalization from 17)")
    p.add_argument("--static", action="store_true",
                   help="ONNX with a fixed batch (--batch-size) and image size (--img-size): the shape arithmetic of "
                        "the dynamic file folds away")
    p.add_argument("-b", "--batch-size", type=positive_int, default=None,
                   help="the fixed batch of a --static ONNX file (default 1)")
    p.add_argument("--no-check", action="store_true", help="skip comparing the exported file with PyTorch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UserError
    from ..files import check_outputs, replaced_note
    from ..tools.export import (ONNX_OPSET, check_onnx, check_torchscript, default_suffix, export_onnx,
                                export_safetensors, export_torchscript, onnx_metadata)
    from ..models import create_classifier, read_checkpoint
    from ..models.checkpoint import CLASSIFIER_KINDS, expect_kind, model_name_for
    from ..models.fuse import fuse

    if args.fuse and args.fmt == "safetensors":
        raise UserError("--fuse changes the weights' names so no model could load them: export safetensors "
                        "without --fuse (fuse after loading with fcvit.fuse).")
    if args.fmt != "onnx" and (args.static or args.batch_size):
        used = "--static" if args.static else "--batch-size"
        raise UserError(f"{used} applies to ONNX only: TorchScript and safetensors files take any batch and size.")
    if args.batch_size and not args.static:
        raise UserError("--batch-size fixes the batch of a --static ONNX file: add --static, or leave it out for a "
                        "dynamic batch.")
    if args.img_size < 32:
        raise UserError(f"--img-size {args.img_size} is too small: FCViT downsamples by 32, use at least 32.")
    checkpoint = read_checkpoint(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None:  # its kind and model name the default output, before it is checked
        expect_kind(checkpoint, CLASSIFIER_KINDS, f"Checkpoint '{args.checkpoint}'")
    args.model = args.model or model_name_for(checkpoint or {}, "fcvit_tiny")
    output = args.output or f"{args.model}{default_suffix(args.fmt)}"
    replaced = check_outputs([output], [args.checkpoint] if args.checkpoint else [], args.overwrite,
                             choose="choose another --output", input_name="checkpoint")
    model = create_classifier(args.model, args.checkpoint, checkpoint=checkpoint).eval()
    if args.checkpoint is None:
        _logger.warning("No --checkpoint given: exporting %s with its random initial weights.", args.model)
    model = fuse(model) if args.fuse else model
    batch, opset = args.batch_size or 1, args.opset or ONNX_OPSET
    if args.fmt == "onnx":
        export_onnx(model, output, img_size=args.img_size, opset=opset, static=args.static, batch_size=batch,
                    metadata=onnx_metadata(model, checkpoint, args.model,
                                           (3, args.img_size, args.img_size) if args.static else None))
    elif args.fmt == "torchscript":
        export_torchscript(model, output)
    else:
        export_safetensors(model, output, metadata={"arch": args.model, "format": "pt"})
    print(f"wrote {output}")
    if args.fmt == "onnx":
        import onnx

        nodes = len(onnx.load(output).graph.node)
        shape = f"fixed {batch}x3x{args.img_size}x{args.img_size}" if args.static else "dynamic batch and size"
        print(f"graph: {nodes} nodes, opset {opset}, {shape}")
    if replaced:
        print(replaced_note(replaced))
    if not args.no_check and args.fmt != "safetensors":
        checked = batch if args.static else 2
        inputs = torch.randn(checked, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
        check = check_onnx if args.fmt == "onnx" else check_torchscript
        diff = check(model, output, inputs)
        verdict = "ok" if diff <= TOLERANCE else "MISMATCH"
        shape = "the fixed shape" if args.static else "exported with batch 1"
        print(f"check: batch {checked} ({shape}), max |difference| to PyTorch {diff:.2e} ({verdict})")
        if diff > TOLERANCE:
            raise UserError(f"The exported file differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}): "
                            f"try another --opset or report the model and versions.")
    return 0
