"""Semantic segmentation parts: label mapping, dataset checks, joint transforms, metrics, model, predict."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from fcvit.errors import UserError
from fcvit.tasks.segmentation import (
    ADE20K_CLASSES,
    IGNORE_INDEX,
    ConfusionMatrix,
    SegmentationFolder,
    create_segmenter,
    format_class_table,
    map_labels,
    read_class_names,
    train_transforms,
)
from fcvit.engine.workers import ignore_stop_signals, user_errors_from_workers
from fcvit.tasks.segmentation.predict import color_palette, colorize, predict_images
from synthetic_data import make_synthetic_dataset
from fcvit.tasks.segmentation.transforms import CatMaxRatioCrop, PadTo, RandomRescale, eval_size, eval_transforms

TINY_BACKBONE = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_pair(root: Path, folder: str, name: str, image_size=(40, 30), labels=None) -> None:
    (root / "images" / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", image_size, (120, 30, 200)).save(root / "images" / folder / f"{name}.jpg")
    if labels is None:
        labels = np.ones(image_size[::-1], dtype=np.uint8)
    Image.fromarray(labels).save(root / "annotations" / folder / f"{name}.png")


# ---------------------------------------------------------------- label mapping and class names

def test_ade20k_mapping_zero_is_ignored_and_labels_shift_down():
    annotation = np.array([[0, 1, 2], [150, 255, 75]], dtype=np.uint8)
    labels = map_labels(annotation, num_classes=150)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[IGNORE_INDEX, 0, 1], [149, IGNORE_INDEX, 74]]


def test_mapping_without_reduce_zero_label_keeps_values():
    annotation = np.array([[0, 3, 255]], dtype=np.uint8)
    assert map_labels(annotation, num_classes=4, reduce_zero_label=False).tolist() == [[0, 3, 255]]


def test_label_values_beyond_the_classes_are_one_clear_sentence():
    with pytest.raises(UserError) as info:
        map_labels(np.array([[1, 151, 200]], dtype=np.uint8), num_classes=150, source="Annotation 'a.png'")
    message = str(info.value)
    assert "'a.png'" in message and "151, 200" in message and "--num-classes" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="4"):
        map_labels(np.array([[4]], dtype=np.uint8), num_classes=4, reduce_zero_label=False)


def test_class_names(tmp_path):
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag"
    names = tmp_path / "names.txt"
    names.write_text("road\n\nsky\ncar\n")
    assert read_class_names(names) == ["road", "sky", "car"]
    with pytest.raises(UserError, match="3 names but --num-classes is 5"):
        read_class_names(names, num_classes=5)


# ---------------------------------------------------------------- dataset checks

def test_dataset_reads_mapped_masks_and_ignores_other(tmp_path):
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8).repeat(15, 0).repeat(20, 1)
    _write_pair(tmp_path, "training", "a", (40, 30), labels)
    dataset = SegmentationFolder(tmp_path, "train", num_classes=3)
    image, mask = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 30, 40) and image.dtype == torch.uint8
    assert isinstance(mask, tv_tensors.Mask) and mask.shape == (30, 40)
    assert mask[0, 0] == IGNORE_INDEX and mask[0, 39] == 0 and mask[29, 0] == 1 and mask[29, 39] == 2


def test_image_without_annotation_and_annotation_without_image(tmp_path):
    _write_pair(tmp_path, "training", "a")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "training" / "lonely.jpg")
    with pytest.raises(UserError, match=r"1 image\(s\) .* no annotation PNG .*lonely\.jpg"):
        SegmentationFolder(tmp_path, "train", num_classes=3)
    (tmp_path / "images" / "training" / "lonely.jpg").unlink()
    Image.new("L", (8, 8)).save(tmp_path / "annotations" / "training" / "orphan.png")
    with pytest.raises(UserError, match=r"1 annotation\(s\) .* no image .*orphan\.png"):
        SegmentationFolder(tmp_path, "train", num_classes=3)


def test_annotation_of_another_size_than_its_image(tmp_path):
    _write_pair(tmp_path, "training", "a", (40, 30), np.ones((30, 41), dtype=np.uint8))
    with pytest.raises(UserError) as info:
        SegmentationFolder(tmp_path, "train", num_classes=3)
    assert "41x30" in str(info.value) and "40x30" in str(info.value) and "\n" not in str(info.value)


def test_labels_beyond_classes_and_colour_annotations_fail_when_read(tmp_path):
    _write_pair(tmp_path, "training", "a", labels=np.full((30, 40), 9, dtype=np.uint8))
    dataset = SegmentationFolder(tmp_path, "train", num_classes=3)
    with pytest.raises(UserError, match=r"label values 9 beyond the 3 classes"):
        dataset[0]
    Image.new("RGB", (40, 30)).save(tmp_path / "annotations" / "training" / "a.png")
    with pytest.raises(UserError, match="single-channel"):
        dataset[0]


def test_missing_split_folder_names_the_layout(tmp_path):
    with pytest.raises(UserError, match="ADE20K layout"):
        SegmentationFolder(tmp_path, "val", num_classes=3)


def test_worker_user_error_comes_back_as_one_sentence(tmp_path):
    _write_pair(tmp_path, "training", "a", labels=np.full((30, 40), 9, dtype=np.uint8))
    loader = DataLoader(SegmentationFolder(tmp_path, "train", num_classes=3), batch_size=1, num_workers=1)
    with pytest.raises(UserError) as info:
        list(user_errors_from_workers(loader))
    assert str(info.value).startswith("Annotation '") and "\n" not in str(info.value)


def test_workers_that_ignore_stop_signals_are_shut_down_when_iteration_fails(tmp_path):
    """Otherwise the error's traceback keeps them alive and the process hangs at exit waiting for them."""
    import multiprocessing

    _write_pair(tmp_path, "training", "a", labels=np.full((30, 40), 9, dtype=np.uint8))
    loader = DataLoader(SegmentationFolder(tmp_path, "train", num_classes=3), batch_size=1, num_workers=1,
                        persistent_workers=True, worker_init_fn=ignore_stop_signals)
    before = set(multiprocessing.active_children())
    with pytest.raises(UserError) as info:
        list(user_errors_from_workers(loader))
    assert info.value is not None  # the traceback is still held here
    assert not [p for p in multiprocessing.active_children() if p not in before and p.is_alive()]


class _WorkerPids(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        import os

        return os.getpid()


def test_workers_survive_a_stop_signal_sent_to_the_whole_group():
    """The main process decides when to stop; the batches keep coming.

    (Without ``ignore_stop_signals`` the worker dies; depending on what it held at that moment the
    main process then either raises or waits forever on a lock the dead worker owned, so that case
    is not run here.)
    """
    import os
    import signal

    loader = DataLoader(_WorkerPids(), batch_size=1, num_workers=1, worker_init_fn=ignore_stop_signals)
    iterator = iter(loader)
    worker = int(next(iterator))
    os.kill(worker, signal.SIGTERM)
    assert [int(b) for b in iterator] == [worker] * 3


# ---------------------------------------------------------------- transforms

def test_random_rescale_keeps_ratio_inside_the_scaled_box():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.zeros(3, 100, 300, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(100, 300, dtype=torch.uint8))
    for _ in range(10):
        out_image, out_mask = RandomRescale((400, 100), (0.5, 2.0))(image, mask)
        h, w = out_mask.shape
        assert out_image.shape[-2:] == out_mask.shape
        assert abs(w / h - 3.0) < 0.05
        assert 50 - 1 <= h <= 200 + 1 and w <= 800 + 1  # short side 100 * ratio; long side bounded too


def test_cat_max_ratio_crop_avoids_crops_dominated_by_one_class():
    # class 1 in the left 20 columns: about 6 in 7 random 16x16 crops are more than 75% one class
    labels = torch.zeros(64, 64, dtype=torch.uint8)
    labels[:, :20] = 1
    mask = tv_tensors.Mask(labels)
    image = tv_tensors.Image(torch.zeros(3, 64, 64, dtype=torch.uint8))
    plain, constrained = [], []
    for seed in range(40):
        random.seed(seed)
        _, m = CatMaxRatioCrop((16, 16), cat_max_ratio=1.0)(image, mask)
        plain.append(float((m == 0).float().mean()))
        random.seed(seed)
        _, m = CatMaxRatioCrop((16, 16), cat_max_ratio=0.75, max_tries=100)(image, mask)
        constrained.append(float((m == 0).float().mean()))
    assert all(0.25 < r < 0.75 for r in constrained)
    assert sum(not 0.25 < r < 0.75 for r in plain) > 25


def test_pad_fills_image_with_zero_and_mask_with_ignore():
    image = tv_tensors.Image(torch.full((3, 10, 12), 7, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(10, 12, dtype=torch.uint8))
    out_image, out_mask = PadTo((16, 16))(image, mask)
    assert out_image.shape == (3, 16, 16) and out_mask.shape == (16, 16)
    assert out_mask[:10, :12].eq(1).all() and out_mask[10:].eq(IGNORE_INDEX).all() and out_mask[:, 12:].eq(IGNORE_INDEX).all()
    assert out_image[:, 10:].eq(0).all() and out_image[:, :10, :12].eq(7).all()


def test_train_pipeline_gives_crops_with_aligned_masks():
    torch.manual_seed(0)
    labels = torch.zeros(48, 80, dtype=torch.uint8)
    labels[:, 40:] = 1
    colours = torch.zeros(3, 48, 80, dtype=torch.uint8)
    colours[0, :, 40:] = 255  # class 1 is red, class 0 black
    pipeline = train_transforms(crop_size=(32, 32), scale=(128, 32))
    for _ in range(5):
        image, mask = pipeline(tv_tensors.Image(colours), tv_tensors.Mask(labels))
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and mask.dtype == torch.int64
        valid = mask != IGNORE_INDEX
        red = image[0] > image[1] + 1.0  # still red after normalisation and colour jitter
        # nearest-resized labels and bilinear-resized pixels agree away from the boundary
        agree = (red == (mask == 1))[valid].float().mean()
        assert agree > 0.9


def test_eval_size_short_side_and_multiples_of_32():
    assert eval_size(512, 683) == (512, 704)
    assert eval_size(375, 500) == (512, 704)  # 512 x 682.7 -> 683 -> 704
    assert eval_size(1000, 1001) == (512, 544)  # 512 x 512.5 -> 513 -> 544
    assert eval_size(1100, 1101) == (512, 512)  # 512 x 512.47 -> 512 stays 512
    h, w = eval_size(100, 2000)  # long side capped at 2048
    assert w == 2048 and h % 32 == 0
    image = tv_tensors.Image(torch.zeros(3, 50, 70, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(50, 70, dtype=torch.uint8))
    out_image, out_mask = eval_transforms(64, 256)(image, mask)
    assert out_image.shape[-2:] == (64, 96) and out_mask.shape == (50, 70)


# ---------------------------------------------------------------- metrics

def test_metrics_match_a_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 255]])
    prediction = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 0]])
    confusion = ConfusionMatrix(num_classes=4)
    confusion.update(prediction, target)
    # rows = labels, columns = predictions; the ignored pixel counts nowhere; class 3 never occurs
    expected = torch.tensor([[2, 1, 0, 0],
                             [0, 2, 1, 0],
                             [0, 0, 1, 0],
                             [0, 0, 0, 0]])
    assert torch.equal(confusion.matrix, expected)
    scores = confusion.compute()
    iou = [2 / 3, 2 / 4, 1 / 2]  # TP / (TP + FP + FN) per class
    acc = [2 / 3, 2 / 3, 1 / 1]
    assert scores["IoU"][:3] == pytest.approx([v * 100 for v in iou])
    assert math.isnan(scores["IoU"][3]) and math.isnan(scores["Acc"][3])
    assert scores["mIoU"] == pytest.approx(sum(iou) / 3 * 100)
    assert scores["mAcc"] == pytest.approx(sum(acc) / 3 * 100)
    assert scores["aAcc"] == pytest.approx(5 / 7 * 100)
    table = format_class_table(scores, ["a", "b", "c", "d"])
    assert "n/a" in table.splitlines()[5] and "66.67" in table.splitlines()[2]
    # accumulating a second batch adds counts
    confusion.update(torch.tensor([3]), torch.tensor([3]))
    assert confusion.matrix[3, 3] == 1 and confusion.compute()["IoU"][3] == pytest.approx(100.0)


def test_metrics_agree_with_a_pixel_by_pixel_count_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 20, 20), generator=generator)
    target[0, :3] = IGNORE_INDEX
    prediction = torch.randint(0, 5, (2, 20, 20), generator=generator)
    confusion = ConfusionMatrix(num_classes=5)
    confusion.update(prediction, target)
    valid = target != IGNORE_INDEX
    reference = np.zeros((5, 5), dtype=np.int64)
    for label, predicted in zip(target[valid].tolist(), prediction[valid].tolist()):
        reference[label, predicted] += 1
    assert np.array_equal(confusion.matrix.numpy(), reference)
    assert reference.sum() == 2 * 400 - 3 * 20


# ---------------------------------------------------------------- model

def test_semantic_fpn_shapes_and_head_structure():
    model = create_segmenter("fcvit_tiny", num_classes=7, backbone_kwargs=TINY_BACKBONE).eval()
    assert model.fpn.inner_blocks[0][0].in_channels == 16 and model.fpn.layer_blocks[0][0].out_channels == 256
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in head.modules()) for head in model.head.scale_heads]
    assert convs == [1, 1, 2, 3]  # blocks per level until stride 4
    assert model.head.classifier.in_channels == 128 and model.head.classifier.out_channels == 7
    assert isinstance(model.head.dropout, torch.nn.Dropout2d) and model.head.dropout.p == 0.1
    with torch.no_grad():
        assert model.forward_logits(torch.randn(1, 3, 64, 96)).shape == (1, 7, 16, 24)
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 7, 64, 96)
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 7, 50, 70)  # sides that are not multiples of 32


# ---------------------------------------------------------------- predict

def test_colour_masks_and_palette():
    palette = color_palette()
    assert palette.shape == (256, 3) and len({tuple(c) for c in palette}) == 256 and tuple(palette[0]) == (0, 0, 0)
    mask = colorize(np.array([[0, 1], [IGNORE_INDEX, 2]], dtype=np.uint8), num_classes=3)
    assert mask.mode == "P" and np.asarray(mask).tolist() == [[1, 2], [0, 3]]
    assert mask.convert("RGB").getpixel((1, 0)) == tuple(palette[2])


def test_predict_writes_masks_and_overlays(tmp_path):
    make_synthetic_dataset(tmp_path / "data", num_train=0, num_val=2, size=(40, 56), num_classes=3)
    paths = sorted((tmp_path / "data" / "images" / "validation").glob("*.jpg"))
    torch.manual_seed(0)
    model = create_segmenter("fcvit_tiny", num_classes=3, backbone_kwargs=TINY_BACKBONE)
    results = predict_images(model, paths, tmp_path / "out", ["a", "b", "c"], short_side=64)
    assert len(results) == 2
    for path, result in zip(paths, results):
        mask = Image.open(result["mask"])
        overlay = Image.open(result["overlay"])
        assert mask.mode == "P" and mask.size == (56, 40) and overlay.size == (56, 40)
        assert Path(result["mask"]).name == f"{path.stem}_mask.png"
        values = np.asarray(mask)
        assert values.min() >= 1 and values.max() <= 3  # class + 1, every pixel predicted
        assert sum(c["fraction"] for c in result["classes"]) == pytest.approx(1.0)
    assert not list((tmp_path / "out").glob(".*tmp"))
    with pytest.raises(UserError, match="does not exist"):
        predict_images(model, [tmp_path / "missing.jpg"], tmp_path / "out2", ["a", "b", "c"])
    assert not (tmp_path / "out2").exists()


# ---------------------------------------------------------------- distributed evaluation

def _eval_rank(rank: int, port: int, root: str, state: dict, results: "multiprocessing.Queue") -> None:
    import os

    from fcvit.engine import cleanup_distributed, init_distributed
    from fcvit.engine import eval_loader
    from fcvit.tasks.segmentation.evaluate import evaluate

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    ctx = init_distributed("cpu")
    model = create_segmenter("fcvit_tiny", num_classes=3, backbone_kwargs=TINY_BACKBONE)
    model.load_state_dict(state)
    if rank == 1:  # BatchNorm statistics that drifted on this rank must not count
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.add_(3.0)
    dataset = SegmentationFolder(root, "val", num_classes=3, transforms=eval_transforms(64, 256))
    scores = evaluate(model, eval_loader(dataset, 1, ctx, workers=0), 3, ctx, progress=False)
    results.put((rank, len(eval_loader(dataset, 1, ctx, workers=0)), scores["mIoU"], scores["aAcc"]))
    cleanup_distributed()


def test_evaluation_over_two_processes_equals_one_process(tmp_path):
    """Each rank scores a disjoint shard; summed confusion matrices give the single-process numbers."""
    import multiprocessing
    import socket

    from fcvit.engine import eval_loader
    from fcvit.tasks.segmentation.evaluate import evaluate

    root = make_synthetic_dataset(tmp_path / "data", num_train=0, num_val=5, size=(40, 56), num_classes=3)
    torch.manual_seed(0)
    model = create_segmenter("fcvit_tiny", num_classes=3, backbone_kwargs=TINY_BACKBONE)
    with torch.no_grad():
        for module in model.modules():  # non-trivial statistics, shared through the state dict
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    dataset = SegmentationFolder(root, "val", num_classes=3, transforms=eval_transforms(64, 256))
    single = evaluate(model, DataLoader(dataset, batch_size=1), 3, progress=False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")  # children reuse the imported modules: no start-up cost
    results = context.Queue()
    processes = [context.Process(target=_eval_rank, args=(rank, port, str(root), model.state_dict(), results))
                 for rank in range(2)]
    for p in processes:
        p.start()
    outputs = sorted(results.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [o[1] for o in outputs] == [3, 2]  # images 0, 2, 4 and 1, 3: none twice, none dropped
    for _, _, miou, aacc in outputs:
        assert miou == pytest.approx(single["mIoU"], abs=1e-9) and aacc == pytest.approx(single["aAcc"], abs=1e-9)


def test_backbone_starts_from_an_imagenet_classification_checkpoint(tmp_path):
    import timm

    import fcvit  # noqa: F401  (registers the models in timm)

    classifier = timm.create_model("fcvit_tiny", num_classes=10)
    torch.save({"state_dict": classifier.state_dict(), "epoch": 3}, tmp_path / "tiny.pth.tar")
    model = create_segmenter("fcvit_tiny", num_classes=3, backbone_checkpoint=tmp_path / "tiny.pth.tar")
    source, loaded = classifier.state_dict(), model.backbone.state_dict()
    shared = [k for k in loaded if k.removeprefix("trunk.") in source]
    assert "trunk.stem.proj.weight" in shared and len(shared) > 100
    assert all(torch.equal(loaded[k], source[k.removeprefix("trunk.")]) for k in shared)
    assert "head.weight" in model.backbone.skipped_keys
    assert model.config["backbone"] == "fcvit_tiny" and model.config["num_classes"] == 3
