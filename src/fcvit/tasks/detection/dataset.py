"""COCO-format instance datasets, checked when opened (one sentence per problem, see ``docs/reliability.md``).

The categories, sorted by id (custom and non-contiguous ids work), become the model's labels 1..K (0 is
torchvision's background); checkpoints keep their ids and names so results go back to the file's ids.
Boxes of zero width or height are dropped, counted and logged.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.ops import box_convert, clip_boxes_to_image
from torchvision.transforms import v2

from ...data.images import header_size, is_regular_file, load_image
from ...errors import UserError

__all__ = ["Category", "CocoInstances", "DatasetReport", "coco_split_paths", "train_transforms", "eval_transforms",
           "collate_detection", "check_segmentation"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    """One class: the id used in the annotation file and its name; its model label is its position + 1."""
    id: int
    name: str


@dataclass
class DatasetReport:
    """What was found in an annotation file and what was left out."""
    annotation_file: str
    images: int = 0
    annotations: int = 0
    degenerate_boxes_dropped: int = 0
    images_without_annotations: int = 0
    images_skipped: int = 0
    degenerate_examples: List[int] = field(default_factory=list)

    def log(self) -> None:
        _logger.info("%s: %d images, %d annotations.", self.annotation_file, self.images, self.annotations)
        if self.degenerate_boxes_dropped:
            _logger.warning("%s: dropped %d annotations whose box has zero width or height, or lies outside its image "
                            "(annotation ids %s%s).", self.annotation_file, self.degenerate_boxes_dropped,
                            ", ".join(map(str, self.degenerate_examples)),
                            ", ..." if self.degenerate_boxes_dropped > len(self.degenerate_examples) else "")
        if self.images_without_annotations:
            what = "skipped for training" if self.images_skipped else "kept for evaluation"
            _logger.warning("%s: %d images have no usable annotations; they are %s.",
                            self.annotation_file, self.images_without_annotations, what)


def coco_split_paths(root: str | os.PathLike, split: str) -> Tuple[str, str]:
    """(annotation file, image folder) of a split in the COCO layout under ``root``."""
    return os.path.join(root, "annotations", f"instances_{split}2017.json"), os.path.join(root, f"{split}2017")


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        what = "is a folder: pass the .json file inside it" if os.path.isdir(path) else \
            "does not exist: check --data or the --train-ann/--val-ann path"
        raise UserError(f"Annotation file '{path}' {what}.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"Annotation file '{path}' is not valid JSON ({exc.msg} at line {exc.lineno}, "
                        f"column {exc.colno}): re-export or re-download it.") from None
    except UnicodeDecodeError:
        raise UserError(f"Annotation file '{path}' is not UTF-8 text: pass a COCO-format .json file.") from None
    if not isinstance(data, dict):
        raise UserError(f"Annotation file '{path}' holds a JSON {type(data).__name__}, not an object with "
                        "'images', 'annotations' and 'categories': pass a COCO-format instances file.")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise UserError(f"Annotation file '{path}' has no '{missing[0]}' list: pass a COCO-format instances "
                        "file (with 'images', 'annotations' and 'categories').")
    return data


def _first_repeated(values: Sequence[Any]) -> Any:
    return next((v for v, n in Counter(values).items() if n > 1), None)


def _read_categories(data: Mapping[str, Any], path: str) -> List[Category]:
    try:
        cats = sorted((Category(int(c["id"]), str(c.get("name", c["id"]))) for c in data["categories"]),
                      key=lambda c: c.id)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"Annotation file '{path}' has a category without an integer 'id': "
                        "give every category an 'id' and a 'name'.") from None
    dup = _first_repeated([c.id for c in cats])
    if dup is not None:
        raise UserError(f"Annotation file '{path}' lists category id {dup} more than once: make the ids unique.")
    if not cats:
        raise UserError(f"Annotation file '{path}' lists no categories: add the classes under 'categories'.")
    return cats


#: how far (in pixels, and as a fraction of the image side) a box may reach past its image: COCO's own
#: boxes overshoot by rounding; more than this means coordinates of another image or another format
BOX_TOLERANCE_PX = 1.0
BOX_TOLERANCE_FRACTION = 0.01


def _image_size(img: Mapping[str, Any], path: str) -> Tuple[float, float]:
    """(height, width) of an image entry, refused unless both are finite positive numbers."""
    try:
        height, width = float(img["height"]), float(img["width"])
    except (TypeError, ValueError):
        height = width = float("nan")
    if not (np.isfinite(height) and np.isfinite(width) and height > 0 and width > 0):
        raise UserError(f"Image {img.get('id')} ('{img.get('file_name')}') in '{path}' has width {img['width']!r} and "
                        f"height {img['height']!r}: give its real size in pixels (positive numbers).")
    return height, width


def _check_box(ann: Mapping[str, Any], box: Tuple[float, float, float, float], image_hw: Tuple[float, float],
               path: str) -> None:
    """A box must be finite, of non-negative size and inside its image up to the tolerance."""
    (x, y, w, h), (height, width) = box, image_hw
    problem = ""
    if not all(np.isfinite(v) for v in box):
        problem = "is not finite"
    elif w < 0 or h < 0:
        problem = "has a negative width or height"
    elif max(-x, x + w - width, 0.0) > max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRACTION * width) or \
            max(-y, y + h - height, 0.0) > max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRACTION * height):
        problem = f"reaches outside its {width:g}x{height:g} image"
    if problem:
        raise UserError(f"Annotation {ann.get('id')} in '{path}' has bbox {list(ann['bbox'])!r}, which {problem}: "
                        "boxes are [x, y, width, height] in pixels of their image; fix or drop the annotation.")


def _readable_size(path: str) -> Optional[Tuple[int, int]]:
    """(width, height) from the header, or None: a file that cannot be read is reported when it is loaded."""
    try:
        return header_size(path)
    except UserError:
        return None


def _check_real_size(file: str, size: Optional[Tuple[int, int]], img: Mapping[str, Any], path: str) -> None:
    """An image whose real (width, height) differs from its entry would have its boxes clipped or dropped wrongly."""
    if size is not None and (float(size[1]), float(size[0])) != (float(img["height"]), float(img["width"])):
        raise UserError(f"Image '{file}' is {size[0]}x{size[1]} but '{path}' says {img['width']}x{img['height']}: "
                        "fix 'width'/'height' in the file or replace the image.")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_segmentation(ann: Mapping[str, Any], image_hw: Tuple[float, float], path: str) -> None:
    """Refuse what pycocotools cannot read (or reads as a box): polygons need an even count >= 6 of finite
    numbers, an RLE the image's [height, width] as its size and a list or string as its counts."""
    seg, problem = ann["segmentation"], ""
    if isinstance(seg, list):
        if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_finite_number, p))
                   for p in seg):
            problem = "holds a polygon that is not an even count of at least 6 finite numbers [x1, y1, x2, y2, ...]"
    elif isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(map(_finite_number, size))
                and tuple(map(float, size)) == tuple(image_hw)):
            problem = f"is an RLE of size {size!r}, not its image's [height, width] {[int(v) for v in image_hw]}"
        elif not isinstance(seg.get("counts"), (list, str, bytes)):  # bytes: pycocotools compresses in place
            problem = "is an RLE whose 'counts' is neither a list nor a string"
    else:
        problem = f"is a {type(seg).__name__}, neither a list of polygons nor an RLE"
    if problem:
        raise UserError(f"Annotation {ann.get('id')} in '{path}' has a segmentation that {problem}: fix or drop the "
                        "annotation.")


class CocoInstances(torch.utils.data.Dataset):
    """Images with boxes, labels and instance masks from a COCO-format file, as torchvision targets; ``categories``
    are the model's (default: the file's). Images without usable annotations are skipped with ``train=True``
    (nothing to learn), kept for evaluation (detections on them are false positives COCOeval must see)."""

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike, train: bool = False,
                 categories: Optional[Sequence[Category]] = None, transforms: Optional[Callable] = None) -> None:
        self.annotation_file, self.image_dir = os.fspath(annotation_file), os.fspath(image_dir)
        self.train, self.transforms = train, transforms
        data = _read_json(self.annotation_file)
        file_categories = _read_categories(data, self.annotation_file)
        self.categories: List[Category] = list(categories) if categories is not None else file_categories
        self.label_of_category = {c.id: i + 1 for i, c in enumerate(self.categories)}
        self.report = DatasetReport(self.annotation_file)
        self.coco = self._index(data)
        self.ids = self._select_images()
        self.report.log()

    # -- checks, once, when the dataset is opened ------------------------------------------------------
    def _image_sizes(self, images: List[Dict[str, Any]]) -> Dict[Any, Tuple[float, float]]:
        path = self.annotation_file
        if not os.path.isdir(self.image_dir):
            raise UserError(f"Image folder '{self.image_dir}' does not exist: check --data or the "
                            "--train-images/--val-images path.")
        if not all(isinstance(img, dict) and all(k in img for k in ("id", "file_name", "height", "width"))
                   for img in images):
            raise UserError(f"Annotation file '{path}' has an image entry without 'id', 'file_name', "
                            "'height' and 'width': re-export it in COCO format.")
        repeated = _first_repeated([img["id"] for img in images])
        if repeated is not None:
            raise UserError(f"Image id {repeated!r} is listed more than once under 'images' in '{path}': give "
                            "every image its own id.")
        repeated = _first_repeated([os.path.normpath(img["file_name"]) for img in images])
        if repeated is not None:
            ids = [img["id"] for img in images if os.path.normpath(img["file_name"]) == repeated]
            raise UserError(f"Image file '{repeated}' is listed under ids {ids[0]} and {ids[1]} in '{path}': list "
                            "each image once, with all its annotations.")
        files = [os.path.join(self.image_dir, img["file_name"]) for img in images]
        missing = [img["file_name"] for img, file in zip(images, files) if not is_regular_file(file)]
        if missing:
            raise UserError(f"{len(missing)} of {len(images)} images listed in '{path}' are missing from "
                            f"'{self.image_dir}' or are no regular files (first: {missing[0]}): check the image "
                            "folder or download them.")
        sizes = {img["id"]: _image_size(img, path) for img in images}
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:  # headers only, ~0.1 ms an image
            for img, file, size in zip(images, files, pool.map(_readable_size, files)):
                _check_real_size(file, size, img, path)
        return sizes

    def _check_annotation(self, ann: Dict[str, Any], sizes: Mapping[Any, Tuple[float, float]],
                          known_in_file: set) -> bool:
        """Refuse what cannot train; False for a box of zero size (in the file or once clipped to the image)."""
        path = self.annotation_file
        if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "category_id", "bbox")):
            raise UserError(f"Annotation file '{path}' has an annotation without 'image_id', 'category_id' "
                            "and 'bbox': re-export it in COCO format.")
        if ann["image_id"] not in sizes:
            raise UserError(f"Annotation {ann.get('id')} in '{path}' refers to image id {ann['image_id']}, "
                            "which is not under 'images': fix or re-export the file.")
        cat = ann["category_id"]
        if cat not in known_in_file:
            raise UserError(f"Annotation {ann.get('id')} in '{path}' has category id {cat}, which is not "
                            "listed under 'categories': add the category or fix the annotation.")
        if cat not in self.label_of_category:
            known = ", ".join(f"{c.id} ({c.name})" for c in self.categories[:12])
            known += ", ..." if len(self.categories) > 12 else ""
            raise UserError(f"Category id {cat} used in '{path}' is unknown to the model, which knows "
                            f"{len(self.categories)} categories ({known}): "
                            "use annotations with the training categories or train a model on these.")
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (TypeError, ValueError):
            raise UserError(f"Annotation {ann.get('id')} in '{path}' has bbox {ann['bbox']!r}, not four numbers "
                            "[x, y, width, height]: fix or re-export the file.") from None
        height, width = sizes[ann["image_id"]]
        _check_box(ann, (x, y, w, h), (height, width), path)
        if min(x + w, width) <= max(x, 0.0) or min(y + h, height) <= max(y, 0.0):
            self.report.degenerate_boxes_dropped += 1
            if len(self.report.degenerate_examples) < 5:
                self.report.degenerate_examples.append(ann.get("id"))
            return False
        if "segmentation" not in ann or not ann["segmentation"]:
            raise UserError(f"Annotation {ann.get('id')} in '{path}' has no 'segmentation': Mask R-CNN needs "
                            "a polygon or RLE mask for every object; add them or drop the annotation.")
        check_segmentation(ann, (height, width), path)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", w * h)
        return True

    def _index(self, data: Dict[str, Any]) -> COCO:
        images = data["images"]
        sizes = self._image_sizes(images)
        repeated = _first_repeated([a["id"] for a in data["annotations"] if isinstance(a, dict) and "id" in a])
        if repeated is not None:
            raise UserError(f"Annotation id {repeated!r} is used more than once in '{self.annotation_file}': give "
                            "every annotation its own id.")
        known_in_file = {c["id"] for c in data["categories"] if isinstance(c, dict) and "id" in c}
        kept = [ann for ann in data["annotations"] if self._check_annotation(ann, sizes, known_in_file)]
        free = itertools.count(max([a["id"] for a in kept if isinstance(a.get("id"), int)], default=0) + 1)
        for ann in kept:  # ids for those the file left without, after the file's own
            ann.setdefault("id", next(free))
        self.report.images, self.report.annotations = len(images), len(kept)
        coco = COCO()
        coco.dataset = dict(data, annotations=kept)
        coco.annotation_file = self.annotation_file  # for the evaluator's messages
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco

    def _select_images(self) -> List[int]:
        ids = sorted(self.coco.imgs)
        usable = [i for i in ids if any(not a["iscrowd"] for a in self.coco.imgToAnns.get(i, []))]
        self.report.images_without_annotations = len(ids) - len(usable)
        if self.train:
            self.report.images_skipped = len(ids) - len(usable)
            if not usable:
                raise UserError(f"No image in '{self.annotation_file}' has a usable annotation (a non-crowd "
                                "object with a box of non-zero size): training needs annotated images.")
            return usable
        if not ids:
            raise UserError(f"Annotation file '{self.annotation_file}' lists no images: add them under 'images'.")
        return ids

    # -- access ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratios(self) -> List[float]:
        """Width / height of every image, from the annotation file (no image is opened)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def category_names(self) -> List[str]:  # by model label, 'background' at 0
        return ["background"] + [c.name for c in self.categories]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = os.path.join(self.image_dir, info["file_name"])
        image = load_image(path)
        _check_real_size(path, image.size, info, self.annotation_file)
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a["iscrowd"]]
        height, width = info["height"], info["width"]
        boxes = box_convert(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy")
        boxes = clip_boxes_to_image(boxes, (height, width))
        masks = (np.stack([self.coco.annToMask(a) for a in anns]) if anns
                 else np.zeros((0, height, width), np.uint8))
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of_category[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": image_id,
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
        }
        img = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target


def train_transforms(flip_prob: float = 0.5) -> v2.Compose:
    """The 1x recipe's horizontal flip; resizing and normalisation happen inside the model (torchvision's
    ``GeneralizedRCNNTransform``), so that predictions come back in the original image's pixels."""
    return v2.Compose([v2.RandomHorizontalFlip(flip_prob), v2.ToDtype(torch.float32, scale=True)])


def eval_transforms() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def collate_detection(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> Tuple[List[torch.Tensor], List[Dict]]:
    """Lists of images and targets: torchvision's detection models batch images of different sizes themselves."""
    images, targets = zip(*batch)
    return list(images), list(targets)
