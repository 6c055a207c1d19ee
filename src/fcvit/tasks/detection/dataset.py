"""COCO-format instance datasets: images, boxes, masks and categories, checked before training starts.

Any COCO-format annotation file works, with custom classes and non-contiguous category ids: the
categories, sorted by id, become the model's labels 1..K (0 is the background, as torchvision's
detection models expect), and the checkpoint keeps the id and name of each so that results go back
to the file's ids. Problems a user can fix are found when the dataset is opened and reported in one
sentence each: a file that does not parse, missing image files, image sizes that differ from the
files' headers, boxes that are not finite, of negative size or outside their image (beyond a pixel or
1%), boxes of zero width or height (dropped, counted and logged), images without annotations (kept
for evaluation, skipped for training) and category ids the model does not know.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from ...data import load_image
from ...errors import UserError

__all__ = [
    "Category", "CocoInstances", "DatasetReport", "coco_split_paths", "train_transforms", "eval_transforms",
    "collate_detection", "read_categories",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Category:
    """One class: the id used in the annotation file and its name; its model label is its position + 1."""

    id: int
    name: str


@dataclass
class DatasetReport:
    """What was found in an annotation file and what was left out, for the log and for tests."""

    annotation_file: str
    images: int = 0
    annotations: int = 0
    degenerate_boxes_dropped: int = 0
    crowd_annotations: int = 0
    images_without_annotations: int = 0
    images_skipped: int = 0
    degenerate_examples: List[int] = field(default_factory=list)

    def log(self) -> None:
        _logger.info("%s: %d images, %d annotations.", self.annotation_file, self.images, self.annotations)
        if self.degenerate_boxes_dropped:
            _logger.warning(
                "%s: dropped %d annotations whose box has zero width or height, or lies outside its image "
                "(annotation ids %s%s).",
                self.annotation_file, self.degenerate_boxes_dropped,
                ", ".join(map(str, self.degenerate_examples)),
                ", ..." if self.degenerate_boxes_dropped > len(self.degenerate_examples) else "")
        if self.images_without_annotations:
            what = "skipped for training" if self.images_skipped else "kept for evaluation"
            _logger.warning("%s: %d images have no usable annotations; they are %s.",
                            self.annotation_file, self.images_without_annotations, what)


def coco_split_paths(root: str | os.PathLike, split: str) -> Tuple[str, str]:
    """(annotation file, image folder) of a split in the COCO layout under ``root``."""
    root = os.fspath(root)
    return (os.path.join(root, "annotations", f"instances_{split}2017.json"),
            os.path.join(root, f"{split}2017"))


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise UserError(f"Annotation file '{path}' does not exist: check --data or the --train-ann/--val-ann path.")
    if os.path.isdir(path):
        raise UserError(f"Annotation file '{path}' is a folder: pass the .json file inside it.")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
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


def read_categories(data: Mapping[str, Any], path: str) -> List[Category]:
    """The file's categories sorted by id, checked for duplicate ids."""
    try:
        cats = sorted((Category(int(c["id"]), str(c.get("name", c["id"]))) for c in data["categories"]),
                      key=lambda c: c.id)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"Annotation file '{path}' has a category without an integer 'id': "
                        "give every category an 'id' and a 'name'.") from None
    ids = [c.id for c in cats]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
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
    """A box must be finite, of non-negative size and inside its image up to the tolerance; one sentence if not."""
    x, y, w, h = box
    height, width = image_hw
    problem = ""
    if not all(np.isfinite(v) for v in box):
        problem = "is not finite"
    elif w < 0 or h < 0:
        problem = "has a negative width or height"
    else:
        reach_x = max(-x, x + w - width, 0.0)
        reach_y = max(-y, y + h - height, 0.0)
        if reach_x > max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRACTION * width) or \
                reach_y > max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRACTION * height):
            problem = f"reaches outside its {width:g}x{height:g} image"
    if problem:
        raise UserError(f"Annotation {ann.get('id')} in '{path}' has bbox {list(ann['bbox'])!r}, which {problem}: "
                        "boxes are [x, y, width, height] in pixels of their image; fix or drop the annotation.")


def _readable_size(path: str) -> Optional[Tuple[int, int]]:
    """(width, height) from the header, or None: a file that cannot be read is reported when it is loaded."""
    from ..segmentation.data import header_size

    try:
        return header_size(path)
    except UserError:
        return None


def _check_image_headers(images: Sequence[Mapping[str, Any]], image_dir: str, path: str, workers: int = 8) -> None:
    """Refuse an image whose real size differs from its entry (its boxes would be clipped or dropped wrongly).

    Only headers are read, on threads (about 0.1 ms per image: see docs/reliability.md)."""
    from concurrent.futures import ThreadPoolExecutor

    files = [os.path.join(image_dir, img["file_name"]) for img in images]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
        real = list(pool.map(_readable_size, files))
    for img, file, size in zip(images, files, real):
        if size is not None and (float(size[1]), float(size[0])) != (float(img["height"]), float(img["width"])):
            raise UserError(f"Image '{file}' is {size[0]}x{size[1]} but '{path}' says {img['width']}x{img['height']}: "
                            "fix 'width'/'height' in the file or replace the image.")


class CocoInstances(torch.utils.data.Dataset):
    """Images with boxes, labels and instance masks from a COCO-format file, as torchvision targets.

    ``categories`` are the classes of the model (from its checkpoint); by default the file's own. An
    annotation whose category id is not among them is an error. With ``train=True`` images without
    usable annotations are skipped, since they give Mask R-CNN nothing to learn from; for evaluation
    they stay, because detections on them are false positives that COCOeval must see.
    """

    def __init__(
            self,
            annotation_file: str | os.PathLike,
            image_dir: str | os.PathLike,
            train: bool = False,
            categories: Optional[Sequence[Category]] = None,
            transforms: Optional[Callable] = None,
    ) -> None:
        self.annotation_file = os.fspath(annotation_file)
        self.image_dir = os.fspath(image_dir)
        self.train = train
        self.transforms = transforms
        data = _read_json(self.annotation_file)
        file_categories = read_categories(data, self.annotation_file)
        self.categories: List[Category] = list(categories) if categories is not None else file_categories
        self.label_of_category = {c.id: i + 1 for i, c in enumerate(self.categories)}
        self.report = DatasetReport(self.annotation_file)
        self.coco = self._index(data)
        self.ids = self._select_images()
        self.report.log()

    # -- checks, once, when the dataset is opened ------------------------------------------------------
    def _index(self, data: Dict[str, Any]) -> COCO:
        path = self.annotation_file
        if not os.path.isdir(self.image_dir):
            raise UserError(f"Image folder '{self.image_dir}' does not exist: check --data or the "
                            "--train-images/--val-images path.")
        images = data["images"]
        for img in images:
            if not all(k in img for k in ("id", "file_name", "height", "width")):
                raise UserError(f"Annotation file '{path}' has an image entry without 'id', 'file_name', "
                                "'height' and 'width': re-export it in COCO format.")
        missing = [img["file_name"] for img in images
                   if not os.path.isfile(os.path.join(self.image_dir, img["file_name"]))]
        if missing:
            raise UserError(f"{len(missing)} of {len(images)} images listed in '{path}' are missing from "
                            f"'{self.image_dir}' (first: {missing[0]}): check the image folder or download them.")
        sizes = {img["id"]: _image_size(img, path) for img in images}
        _check_image_headers(images, self.image_dir, path)
        known_in_file = {c["id"] for c in data["categories"] if isinstance(c, dict) and "id" in c}
        kept = []
        for ann in data["annotations"]:
            if not all(k in ann for k in ("image_id", "category_id", "bbox")):
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
                raise UserError(f"Category id {cat} used in '{path}' is unknown to the model, which knows "
                                f"{len(self.categories)} categories ({known}{', ...' if len(self.categories) > 12 else ''}): "
                                "use annotations with the training categories or train a model on these.")
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (TypeError, ValueError):
                raise UserError(f"Annotation {ann.get('id')} in '{path}' has bbox {ann['bbox']!r}, not four numbers "
                                "[x, y, width, height]: fix or re-export the file.") from None
            info = sizes[ann["image_id"]]
            _check_box(ann, (x, y, w, h), info, path)
            # zero width or height, in the file or once clipped to the image (a box outside it)
            if min(x + w, info[1]) <= max(x, 0.0) or min(y + h, info[0]) <= max(y, 0.0):
                self.report.degenerate_boxes_dropped += 1
                if len(self.report.degenerate_examples) < 5:
                    self.report.degenerate_examples.append(ann.get("id"))
                continue
            if "segmentation" not in ann or not ann["segmentation"]:
                raise UserError(f"Annotation {ann.get('id')} in '{path}' has no 'segmentation': Mask R-CNN needs "
                                "a polygon or RLE mask for every object; add them or drop the annotation.")
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", w * h)
            kept.append(ann)
        for i, ann in enumerate(kept):
            ann.setdefault("id", i + 1)
        data = dict(data, annotations=kept)
        self.report.images = len(images)
        self.report.annotations = len(kept)
        self.report.crowd_annotations = sum(1 for a in kept if a["iscrowd"])
        coco = COCO()
        coco.dataset = data
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

    def category_names(self) -> List[str]:
        """Names by model label, with 'background' at 0."""
        return ["background"] + [c.name for c in self.categories]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = os.path.join(self.image_dir, info["file_name"])
        image = load_image(path)
        if (image.height, image.width) != (info["height"], info["width"]):
            raise UserError(f"Image '{path}' is {image.width}x{image.height} but '{self.annotation_file}' says "
                            f"{info['width']}x{info['height']}: fix 'width'/'height' in the file or replace the image.")
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a["iscrowd"]]
        height, width = info["height"], info["width"]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        masks = np.stack([self._mask(a, height, width) for a in anns]) if anns else np.zeros((0, height, width),
                                                                                              np.uint8)
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

    @staticmethod
    def _mask(ann: Mapping[str, Any], height: int, width: int) -> np.ndarray:
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            rles = coco_mask.frPyObjects(seg, height, width)
            rle = coco_mask.merge(rles)
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(seg, height, width)
        else:
            rle = seg
        return coco_mask.decode(rle).astype(np.uint8)


def train_transforms(flip_prob: float = 0.5) -> v2.Compose:
    """The 1x recipe's augmentation: a horizontal flip (boxes and masks follow, via tv_tensors).

    Resizing to the shorter side and normalisation happen inside the model (torchvision's
    ``GeneralizedRCNNTransform``), so that predictions come back in the original image's pixels.
    """
    return v2.Compose([v2.RandomHorizontalFlip(flip_prob), v2.ToDtype(torch.float32, scale=True)])


def eval_transforms() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True)])


def collate_detection(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> Tuple[List[torch.Tensor], List[Dict]]:
    """Lists of images and targets: torchvision's detection models batch images of different sizes themselves."""
    images, targets = zip(*batch)
    return list(images), list(targets)
