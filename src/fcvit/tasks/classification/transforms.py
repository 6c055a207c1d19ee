"""The training transform of the recipe, built by timm, made to run under every Pillow version.

The paper's RandAugment policy ``rand-m9-mstd0.5-inc1`` draws magnitudes up to 10, where timm's
increasing posterize keeps 0 bits. Pillow < 13 turned that into a black image (every bit masked);
Pillow 13 raises ``ValueError`` instead, which kills training in its first epoch. Rather than pin
Pillow or patch timm's module, the transform timm builds is walked and each posterize op of *this*
transform gets a posterize that keeps the old meaning of 0 bits.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, List

from PIL import Image

__all__ = ["create_train_transform", "posterize_keeping_zero_bits", "restore_zero_bit_posterize"]

# Pillow < 13 posterized only these modes; keeping no bit made every pixel 0
_MASKABLE_MODES = ("L", "RGB")
# where timm's and torchvision's composite transforms keep their parts
_CHILD_ATTRIBUTES = ("transforms", "ops", "policy")


def posterize_keeping_zero_bits(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, except that keeping no bit gives the all-black image Pillow < 13 produced.

    Module-level (not a closure) so that transforms holding it pickle into DataLoader workers.
    """
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0 and img.mode in _MASKABLE_MODES:
        return Image.new(img.mode, img.size, 0)
    return posterize(img, bits_to_keep, **kwargs)


def _parts(node: Any) -> Iterator[Any]:
    """The transforms directly inside ``node`` (Compose, RandAugment, AutoAugment policies, tuples)."""
    if isinstance(node, (list, tuple)):
        yield from node
        return
    for name in _CHILD_ATTRIBUTES:
        children = getattr(node, name, None)
        if isinstance(children, (list, tuple)):
            yield from children


def restore_zero_bit_posterize(transform: Any) -> List[Any]:
    """Give every timm ``AugmentOp`` in ``transform`` that posterizes the zero-bit-safe posterize.

    Only the op instances of this transform change; timm's tables stay as they are. Returns the ops
    changed (none when the transform has no auto-augmentation).
    """
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
            continue
        pending.extend(_parts(node))
    return changed


def create_train_transform(**kwargs: Any) -> Callable:
    """``timm.data.create_transform(**kwargs)`` whose posterize ops accept the 0 bits the recipe draws."""
    from timm.data import create_transform

    transform = create_transform(**kwargs)
    restore_zero_bit_posterize(transform)
    return transform
