"""The main commands with their DEFAULT flags on real photographs: only the data, the batch and the number of
steps are small. The other tests shrink models and images to run in seconds; these check that the paper's
settings themselves run (224 px with the full augmentation recipe, detection at 800/1333, segmentation
at 512 crops with the default backbone)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from fcvit.cli.main import main
from fcvit.engine import LAST_NAME, load_train_state

from real_photos import sample_photos

# two classes of three photographs each; every image a different crop (and half of them mirrored)
CLASSES = {"animal_or_food": ("chelsea", "coffee", "flower"), "scene": ("astronaut", "rocket", "china")}
# COCO-style objects in the photographs: (category id, centre x, centre y, half width, half height) as fractions
OBJECTS = {
    "astronaut": [(1, 0.45, 0.30, 0.17, 0.22)],  # the astronaut's head
    "chelsea": [(17, 0.45, 0.50, 0.30, 0.42)],  # the cat
    "coffee": [(47, 0.50, 0.48, 0.30, 0.36)],  # the cup
    "rocket": [(5, 0.47, 0.45, 0.06, 0.40), (1, 0.85, 0.85, 0.04, 0.08)],  # rocket (as 'airplane'), a figure
}
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}, {"id": 17, "name": "cat"},
              {"id": 47, "name": "cup"}]
# a machine setting, not the recipe: the default 4 loader processes would oversubscribe a 2-core CI machine
ONE_LOADER = ["--workers", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos() -> Dict[str, np.ndarray]:
    return sample_photos()


def fcvit(capsys, *argv: object) -> Tuple[int, str, str]:
    """Run the CLI in this process; (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def random_crop(pixels: np.ndarray, rng: np.random.Generator, min_fraction: float = 0.7) -> np.ndarray:
    """A crop of 70-100% of each side, mirrored half of the time: another realistic photo of the scene."""
    height, width = pixels.shape[:2]
    h = int(rng.integers(int(height * min_fraction), height + 1))
    w = int(rng.integers(int(width * min_fraction), width + 1))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    crop = pixels[top:top + h, left:left + w]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def write_image_folder(root: Path, photos: Dict[str, np.ndarray], train_per_class: int = 8,
                       val_per_class: int = 4) -> Path:
    """``root/{train,val}/<class>/*.jpg``: JPEG crops of the sample photographs, about 210-640 px a side."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name, sources in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                source = sources[i % len(sources)]
                Image.fromarray(random_crop(photos[source], rng)).save(folder / f"{source}_{i}.jpg", quality=90)
    return root


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, points: int = 24) -> List[float]:
    return [v for k in range(points) for v in (cx + rx * math.cos(2 * math.pi * k / points),
                                               cy + ry * math.sin(2 * math.pi * k / points))]


def write_coco_split(root: Path, split: str, names: Sequence[str], photos: Dict[str, np.ndarray]) -> None:
    """``root/{split}2017/*.jpg`` and ``root/annotations/instances_{split}2017.json`` with polygon objects."""
    image_dir = root / f"{split}2017"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for image_id, name in enumerate(names, start=1):
        height, width = photos[name].shape[:2]
        Image.fromarray(photos[name]).save(image_dir / f"{name}.jpg", quality=90)
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": width, "height": height})
        for category, fx, fy, fw, fh in OBJECTS[name]:
            cx, cy, rx, ry = fx * width, fy * height, fw * width, fh * height
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [cx - rx, cy - ry, 2 * rx, 2 * ry], "area": math.pi * rx * ry,
                                "iscrowd": 0, "segmentation": [ellipse_polygon(cx, cy, rx, ry)]})
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)


def label_map(pixels: np.ndarray) -> np.ndarray:
    """ADE20K-style annotation of a photograph: brightness bands as classes 1-4, a 0 ('other') frame."""
    grey = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint8)
    labels = (1 + grey // 64).astype(np.uint8)
    labels[:4, :] = 0
    labels[:, :4] = 0
    return labels


def write_ade_split(root: Path, split: str, names: Sequence[str], photos: Dict[str, np.ndarray]) -> None:
    """``root/images/<split>/*.jpg`` and single-channel ``root/annotations/<split>/*.png``."""
    for kind in ("images", "annotations"):
        (root / kind / split).mkdir(parents=True)
    for name in names:
        Image.fromarray(photos[name]).save(root / "images" / split / f"{name}.jpg", quality=95)
        Image.fromarray(label_map(photos[name]), mode="L").save(root / "annotations" / split / f"{name}.png")


def read_summary(folder: Path) -> List[Dict[str, str]]:
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- classification: fcvit_tiny at 224 with the whole augmentation recipe ------------------------------

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, photos) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("photos"), photos)


@pytest.fixture(scope="module")
def trained_224(image_folder, tmp_path_factory) -> Path:
    """`fcvit train DATA --model fcvit_tiny` with the recipe's defaults: 4 steps of 4 images at 224 px."""
    out = tmp_path_factory.mktemp("train") / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", str(image_folder), "--model", "fcvit_tiny", "-b", "4", "--epochs", "1",
              "--cooldown-epochs", "0", "--warmup-epochs", "0", "-j", "1", "--output", str(out)])
    assert exc.value.code == 0
    return out


def test_train_at_224_with_the_default_augmentation(trained_224):
    assert (trained_224 / LAST_NAME).is_file() and (trained_224 / "summary.csv").is_file()
    state = load_train_state(trained_224 / LAST_NAME)
    args = state["args"]
    # the recipe really was on: RandAugment, mixup/cutmix, random erasing, random interpolation, 224 px
    assert args["aa"] == "rand-m9-mstd0.5-inc1" and args["mixup"] > 0 and args["cutmix"] > 0 and args["reprob"] > 0
    assert args["train_interpolation"] == "random" and args["color_jitter"] > 0 and args["img_size"] is None
    assert tuple(state["data_config"]["input_size"]) == (3, 224, 224)
    assert state["class_names"] == sorted(CLASSES) and state["global_step"] == 16 // 4
    rows = read_summary(trained_224)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert math.isfinite(float(rows[0]["eval_loss"]))


def test_validate_the_trained_checkpoint_at_224(trained_224, image_folder, tmp_path, capsys):
    results = tmp_path / "val.json"
    code, out, err = fcvit(capsys, "validate", image_folder, "--model", "fcvit_tiny", "--checkpoint",
                           trained_224 / LAST_NAME, "-b", "4", "-j", "1", "--results-file", results)
    assert code == 0, err
    metrics = json.loads(results.read_text())
    assert metrics["images"] == 2 * 4 and tuple(metrics["img_size"]) == (3, 224, 224)
    assert 0.0 <= metrics["top1"] <= 100.0 and math.isfinite(metrics["loss"])
    # the same weights and data as the training run's evaluation of its last epoch
    assert metrics["top1"] == pytest.approx(float(read_summary(trained_224)[0]["eval_top1"]))


# -- detection: Mask R-CNN with the default backbone at 800/1333 ---------------------------------------

@pytest.mark.slow
def test_detect_train_at_800_1333(tmp_path, photos, capsys):
    data = tmp_path / "coco"
    write_coco_split(data, "train", ["chelsea", "coffee"], photos)  # both landscape: one batch of 2
    write_coco_split(data, "val", ["rocket"], photos)
    out = tmp_path / "run"
    code, stdout, err = fcvit(capsys, "detect", "train", "--data", data, "--output", out, "--epochs", "1",
                              "-b", "2", *ONE_LOADER)
    assert code == 0, err
    assert (out / LAST_NAME).is_file()
    rows = read_summary(out)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))


# -- segmentation: Semantic FPN with the default backbone on 512 crops ---------------------------------

@pytest.mark.slow
def test_segment_train_at_512_crops(tmp_path, photos, capsys):
    data = tmp_path / "ade"
    write_ade_split(data, "training", ["astronaut", "chelsea"], photos)
    write_ade_split(data, "validation", ["coffee"], photos)
    out = tmp_path / "run"
    code, stdout, err = fcvit(capsys, "segment", "train", "--data", data, "--output", out, "--iters", "2",
                              "-b", "2", *ONE_LOADER)
    assert code == 0, err
    assert (out / LAST_NAME).is_file()
    rows = read_summary(out)  # the run ends with an evaluation of the validation photograph
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert 0.0 <= float(rows[0]["mIoU"]) <= 100.0
