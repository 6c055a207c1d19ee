"""The training transform of the recipe, built by timm, made to run under every Pillow version.

The paper's RandAugment policy ``rand-m9-mstd0.5-inc1`` draws magnitudes up to 10, where timm's increasing
posterize keeps 0 bits: Pillow < 13 made that a black image, Pillow 13 raises ``ValueError`` (killing training in
its first epoch). Rather than pin Pillow or patch timm's module, each posterize op of *this* transform gets a
posterize that keeps the old meaning of 0 bits.
"""
from __future__ import annotations

from typing import Any, Callable, List

from PIL import Image

__all__ = ["create_train_transform", "posterize_keeping_zero_bits", "restore_zero_bit_posterize"]

# where timm's and torchvision's composite transforms keep their parts
_CHILD_ATTRIBUTES = ("transforms", "ops", "policy")


def posterize_keeping_zero_bits(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, except that keeping no bit gives the all-black image Pillow < 13 produced (in the modes it
    posterized). Module-level (not a closure) so that transforms holding it pickle into DataLoader workers."""
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0 and img.mode in ("L", "RGB"):
        return Image.new(img.mode, img.size, 0)
    return posterize(img, bits_to_keep, **kwargs)


def restore_zero_bit_posterize(transform: Any) -> List[Any]:
    """Give every timm ``AugmentOp`` in ``transform`` (Compose, RandAugment, AutoAugment policies, tuples) that
    posterizes the zero-bit-safe posterize; timm's tables stay as they are. Returns the ops changed."""
    from timm.data.auto_augment import AugmentOp, posterize

    changed: List[Any] = []
    seen: set = set()
    pending = [transform]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, AugmentOp):
            if node.aug_fn is posterize:
                node.aug_fn = posterize_keeping_zero_bits
                changed.append(node)
        elif isinstance(node, (list, tuple)):
            pending.extend(node)
        else:
            children = (getattr(node, name, None) for name in _CHILD_ATTRIBUTES)
            pending.extend(child for part in children if isinstance(part, (list, tuple)) for child in part)
    return changed


def create_train_transform(**kwargs: Any) -> Callable:
    """``timm.data.create_transform(**kwargs)`` whose posterize ops accept the 0 bits the recipe draws."""
    from timm.data import create_transform

    transform = create_transform(**kwargs)
    restore_zero_bit_posterize(transform)
    return transform
