"""Odd inputs: FIFOs and symlink loops in data folders, EXIF orientation, bad validation images, COCO
segmentations pycocotools cannot read, duplicate ids, all-ignored ADE labels, colliding output names."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcvit.data import ImageReader, load_image
from fcvit.data.images import header_size
from fcvit.errors import UserError
from fcvit.tasks.classification.data import BadImageError, create_classification_dataset
from fcvit.tasks.detection.coco_eval import CocoEvaluator
from fcvit.tasks.detection.dataset import Category, CocoInstances, coco_split_paths
from synthetic_data import make_shapes_coco
from fcvit.tasks.segmentation.data import SegmentationFolder
from synthetic_data import make_synthetic_dataset


def _png(path: Path, size=(12, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    for split in ("train", "val"):
        for name in ("a", "b"):
            _png(tmp_path / split / name / f"{name}1.png")
    return tmp_path


# -- only regular files ------------------------------------------------------------------------------------
def test_a_fifo_is_never_opened_as_an_image(folder, caplog):
    fifo = folder / "train" / "a" / "x.jpg"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING):
        data = create_classification_dataset("", str(folder), "train")
    assert len(data) == 2 and str(fifo) not in [p for p, _ in data.samples]
    assert caplog.text.count("x.jpg") == 1 and "not a regular file" in caplog.text
    with pytest.raises(UserError, match="not a regular file"):
        load_image(fifo)  # refused at once, instead of blocking on the open
    reader = ImageReader([fifo, folder / "train" / "a" / "a1.png"])
    assert [p for p, _ in reader] == [str(folder / "train" / "a" / "a1.png")] and len(reader.skipped) == 1


def test_a_symlink_loop_is_walked_once(folder):
    _png(folder / "train" / "a" / "deep" / "a2.png")
    os.symlink(folder / "train" / "a", folder / "train" / "a" / "loop")
    os.symlink(folder / "train" / "a" / "deep", folder / "train" / "a" / "again")  # a folder reached twice
    data = create_classification_dataset("", str(folder), "train")
    assert sorted(target for _, target in data.samples) == [0, 0, 1]


def test_ade_folders_skip_fifos_with_a_line(tmp_path, caplog):
    root = make_synthetic_dataset(tmp_path / "ade", num_train=2, num_val=1, size=(16, 16))
    os.mkfifo(root / "images" / "training" / "odd.jpg")
    with caplog.at_level(logging.WARNING):
        assert len(SegmentationFolder(root, "train", 4)) == 2
    assert "odd.jpg" in caplog.text and "not a regular file" in caplog.text


def test_validation_images_are_checked_when_the_set_is_built(folder, caplog):
    bad = folder / "val" / "b" / "b1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated: the header still reads
    with pytest.raises(BadImageError, match="b1.png.*--skip-bad-images"):
        create_classification_dataset("", str(folder), "val", evaluation=True)
    with caplog.at_level(logging.WARNING):
        data = create_classification_dataset("", str(folder), "val", skip_bad_images=True, evaluation=True)
    assert len(data) == 2 and "1 unreadable image(s)" in caplog.text


# -- EXIF orientation --------------------------------------------------------------------------------------
def _rotated_jpeg(path: Path, size=(40, 20)) -> Path:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, : size[0] // 2] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_when_images_load(tmp_path):
    path = _rotated_jpeg(tmp_path / "phone.jpg")
    image = np.asarray(load_image(path))
    assert image.shape == (40, 20, 3) and header_size(path) == (20, 40)
    assert image[:20].mean() > 200 and image[20:].mean() < 50  # the stored left half is now on top


def test_an_upright_ade_image_pairs_with_an_annotation_of_its_shown_size(tmp_path):
    root = tmp_path / "ade"
    _rotated_jpeg(root / "images" / "training" / "p.jpg")
    (root / "annotations" / "training").mkdir(parents=True)
    Image.fromarray(np.ones((40, 20), np.uint8)).save(root / "annotations" / "training" / "p.png")
    image, mask = SegmentationFolder(root, "train", 4)[0]
    assert tuple(image.shape) == (3, 40, 20) and tuple(mask.shape) == (40, 20)


# -- COCO ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    return make_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=2, num_val=1, size=(64, 48))


def _coco(shapes: str, tmp_path: Path, change) -> str:
    data = json.loads(Path(coco_split_paths(shapes, "train")[0]).read_text())
    change(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path)


def _segmentation(value):
    def change(data):
        data["annotations"][0]["segmentation"] = value
    return change


@pytest.mark.parametrize("segmentation, words", [
    ([[1, 1, 9, 9]], "polygon that is not an even count of at least 6"),
    ([[1, 1, 9, 1, 9]], "polygon that is not an even count"),
    ([[1, 1, 9, "1", 9, 9]], "polygon that is not an even count"),
    ([[1, 1, 9, 1, float("nan"), 9]], "finite numbers"),
    ({"size": [10, 10], "counts": "abc"}, r"RLE of size \[10, 10\], not its image's \[height, width\] \[48, 64\]"),
    ({"size": [48, 64], "counts": 5}, "'counts' is neither a list nor a string"),
    ("1 2 3", "neither a list of polygons nor an RLE"),
])
def test_coco_segmentations_pycocotools_cannot_read_are_refused(shapes, tmp_path, segmentation, words):
    ann = _coco(shapes, tmp_path, _segmentation(segmentation))
    ann_id = json.loads(Path(ann).read_text())["annotations"][0]["id"]
    with pytest.raises(UserError, match=rf"Annotation {ann_id} in '{ann}' has a segmentation that .*{words}"):
        CocoInstances(ann, coco_split_paths(shapes, "train")[1])


def test_the_evaluator_checks_the_ground_truth_before_pycocotools(shapes):
    data = CocoInstances(*coco_split_paths(shapes, "val"))
    data.coco.dataset["annotations"][0]["segmentation"] = [[1, 2, 3, 4]]
    with pytest.raises(UserError, match=f"in '{data.annotation_file}' has a segmentation that holds a polygon"):
        CocoEvaluator(data.coco, data.categories)


def test_coco_duplicates_are_refused(shapes, tmp_path):
    images = coco_split_paths(shapes, "train")[1]

    def same_annotation_id(data):
        data["annotations"][1]["id"] = data["annotations"][0]["id"]

    def same_file(data):
        data["images"].append(dict(data["images"][0], id=999))

    def same_image_id(data):
        data["images"][1]["id"] = data["images"][0]["id"]

    with pytest.raises(UserError, match="Annotation id .* is used more than once"):
        CocoInstances(_coco(shapes, tmp_path, same_annotation_id), images)
    with pytest.raises(UserError, match=r"Image file 'shapes_0000.png' is listed under ids \d+ and 999"):
        CocoInstances(_coco(shapes, tmp_path, same_file), images)
    with pytest.raises(UserError, match=r"Image id \d+ is listed more than once under 'images'"):
        CocoInstances(_coco(shapes, tmp_path, same_image_id), images)


# -- ADE labels that are all ignored -----------------------------------------------------------------------
@pytest.mark.parametrize("value, reduce_zero", [(0, True), (255, True), (255, False)])
def test_ade_split_whose_every_label_is_ignored_is_refused(tmp_path, value, reduce_zero):
    root = make_synthetic_dataset(tmp_path / "ade", num_train=2, num_val=1, size=(16, 16))
    for annotation in (root / "annotations" / "training").glob("*.png"):
        Image.fromarray(np.full((16, 16), value, np.uint8)).save(annotation)
    with pytest.raises(UserError, match=r"Every pixel of the 2 annotations of .* is ignored"):
        SegmentationFolder(root, "train", 4, reduce_zero_label=reduce_zero).check_labels()
    SegmentationFolder(root, "val", 4 if reduce_zero else 5, reduce_zero_label=reduce_zero).check_labels()


# -- one output name per input -------------------------------------------------------------------------
@pytest.fixture
def same_names(tmp_path):
    return [str(_png(tmp_path / d / name)) for d, name in (("a", "x.jpg"), ("b", "x.jpg"), ("c", "x_2.jpg"))]


def _record_writes(monkeypatch, module) -> list:
    written = []
    real = module.atomic_write

    def record(path, content):
        written.append(os.fspath(path))
        real(path, content)

    monkeypatch.setattr(module, "atomic_write", record)
    return written


def test_segment_predict_writes_one_file_per_input(same_names, tmp_path, monkeypatch):
    import fcvit.tasks.segmentation.predict as predict

    class Flat(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2, x.shape[2] // 4, x.shape[3] // 4)

    written = _record_writes(monkeypatch, predict)
    results = predict.predict_images(Flat(), same_names, tmp_path / "out", ["a", "b"], short_side=32)
    assert len({r["mask"] for r in results}) == 3 and len(written) == len(set(written)) == 6
    assert len(list((tmp_path / "out").iterdir())) == 6


def test_detect_predict_writes_one_file_per_input(same_names, tmp_path, monkeypatch):
    import fcvit.tasks.detection.predict as predict

    class Nothing(nn.Module):
        def forward(self, images):
            return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                     "scores": torch.zeros(0)} for _ in images]

    written = _record_writes(monkeypatch, predict)
    results = predict.predict_images(Nothing(), [Category(1, "shape")], same_names, tmp_path / "out")
    assert len({r["output"] for r in results}) == 3 and len(written) == len(set(written)) == 3
    assert len(list((tmp_path / "out").iterdir())) == 4  # and detections.json
