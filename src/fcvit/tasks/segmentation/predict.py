"""Segmenting image files: colour-coded class masks and overlays written as PNG."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import tv_tensors

from ...data import ImageReader
from ...files import atomic_write, check_image_outputs, make_folder, unique_stems, warn_replaced
from .evaluate import infer_logits
from .transforms import IGNORE_INDEX, eval_transforms

__all__ = ["color_palette", "colorize", "draw_legend", "segment_image", "predict_images", "planned_outputs"]

_logger = logging.getLogger(__name__)


def color_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved RGB); colour 0 is black, so class ``c`` is drawn with
    colour ``c + 1`` and ignored pixels stay black."""
    index, channel = np.arange(num_colors)[:, None], np.arange(3)
    return sum(((index >> (3 * k + channel)) & 1) << (7 - k) for k in range(8)).astype(np.uint8)


def colorize(classes: np.ndarray, num_classes: int) -> Image.Image:
    """A palette ('P') PNG image: pixel values are class indices + 1 (0 = ignored), shown in colour."""
    if num_classes > 254:
        raise ValueError("colour masks hold at most 254 classes")
    values = np.where(classes == IGNORE_INDEX, 0, classes.astype(np.int64) + 1).astype(np.uint8)
    mask = Image.fromarray(values).convert("P")
    mask.putpalette(color_palette(256).flatten().tolist())
    return mask


def draw_legend(image: Image.Image, classes: Sequence[int], class_names: Sequence[str]) -> Image.Image:
    """``image`` with a key in its top-left corner: the colour and name of each of ``classes`` (list the largest
    first), as many as fit its height, then '+N more'."""
    from PIL import ImageDraw, ImageFont

    size = max(10, min(image.size) // 32)
    pad, row, font, palette = size // 2, round(size * 1.4), ImageFont.load_default(size=size), color_palette(256)
    rows = max(2, (image.height - pad) // row)
    fit = len(classes) if len(classes) <= rows else rows - 1
    lines = [class_names[c] for c in classes[:fit]] + [f"+{len(classes) - fit} more"] * (len(classes) > fit)
    drawn = image.convert("RGB")
    draw = ImageDraw.Draw(drawn, "RGBA")
    width = max(draw.textlength(text, font=font) for text in lines) + size + 3 * pad
    draw.rectangle((0, 0, width, len(lines) * row + pad), fill=(0, 0, 0, 160))
    for i, text in enumerate(lines):
        y = pad + i * row
        if i < fit:
            draw.rectangle((pad, y, pad + size, y + size), fill=tuple(palette[classes[i] + 1]), outline="white")
        draw.text((2 * pad + size, y), text, fill="white", font=font)
    return drawn


@torch.inference_mode()
def segment_image(model: nn.Module, image: Image.Image, device: torch.device | str = "cpu",
                  short_side: int = 512, antialias: bool = False) -> np.ndarray:
    """Class index per pixel at the image's own size (the evaluation resize, then back)."""
    pixels = tv_tensors.Image(torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1))
    batch = eval_transforms(short_side, 4 * short_side, antialias=antialias)(pixels).unsqueeze(0).to(device)
    logits = infer_logits(model, batch, (image.height, image.width))
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def planned_outputs(paths: Sequence[str], output_dir: str | os.PathLike) -> List[Tuple[Path, Path]]:
    """The (mask, overlay) files :func:`predict_images` writes for each of ``paths``."""
    return [(Path(output_dir) / f"{stem}_mask.png", Path(output_dir) / f"{stem}_overlay.png")
            for stem in unique_stems(paths)]


def predict_images(model: nn.Module, images: ImageReader | Sequence[str | os.PathLike],
                   output_dir: str | os.PathLike, class_names: Sequence[str], device: torch.device | str = "cpu",
                   alpha: float = 0.5, short_side: int = 512, antialias: bool = False,
                   overwrite: bool = False) -> List[Dict[str, object]]:
    """Write ``<stem>_mask.png`` and ``<stem>_overlay.png`` per image; return the classes found in each.
    ``images``: paths or an :class:`ImageReader` (which skips unreadable files). Nothing is written over an
    input, nor over an existing file unless ``overwrite``."""
    reader = images if isinstance(images, ImageReader) else ImageReader(images)
    outputs = dict(zip(reader.paths, planned_outputs(reader.paths, output_dir)))
    replaced = check_image_outputs([p for pair in outputs.values() for p in pair], reader.paths, overwrite)
    make_folder(output_dir)
    model.eval()
    results = []
    for path, image in reader:
        classes = segment_image(model, image, device, short_side, antialias)
        mask = colorize(classes, len(class_names))
        mask_path, overlay_path = outputs[path]
        ids, counts = np.unique(classes, return_counts=True)
        found = [dict(index=int(ids[i]), name=class_names[int(ids[i])], fraction=float(counts[i] / classes.size))
                 for i in np.argsort(-counts)]
        blended = Image.blend(image.convert("RGB"), mask.convert("RGB"), alpha)  # alpha: the mask's weight
        drawn_overlay = draw_legend(blended, [c["index"] for c in found], class_names)
        for drawn, out_path in ((mask, mask_path), (drawn_overlay, overlay_path)):
            atomic_write(out_path, lambda f: drawn.save(f, format="PNG"))
        results.append(dict(image=path, mask=str(mask_path), overlay=str(overlay_path), classes=found))
    warn_replaced(_logger, replaced, {p for r in results for p in (r["mask"], r["overlay"])})
    return results
