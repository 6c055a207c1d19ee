"""Mask R-CNN with FCViT backbones: model shape, COCO-format data checks, metrics, training, CLI.

Everything runs on a tiny COCO-format dataset of coloured shapes that the tests draw themselves
(non-contiguous category ids 3, 7, 11), with a shrunken backbone and heads so it fits a few CPU seconds.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fcvit.cli.main import main
from fcvit.errors import UserError
from fcvit.models import read_checkpoint
from fcvit.tasks.detection.coco_eval import AP_FIELDS, CocoEvaluator
from fcvit.tasks.detection.dataset import (
    CocoInstances,
    coco_split_paths,
    collate_detection,
    eval_transforms,
    train_transforms,
)
from fcvit.tasks.detection.model import build_mask_rcnn, count_parameters
from fcvit.tasks.detection.sampler import AspectRatioBatchSampler, aspect_ratio_groups
from synthetic_data import make_shapes_coco
import fcvit.engine.loop as loop_module
import fcvit.tasks.detection.train as train_module
from fcvit.tasks.detection.train import build_scheduler, detection_step, late_lr_steps
from fcvit.engine import DistContext, GracefulStop, NonFiniteLossError, resolve_amp

# a backbone and heads small enough for CPU tests (the recipe's are 256 FPN channels, 1024 box head)
TINY = ["--backbone", "fcvit_tiny", "--backbone-depths", "1", "1", "1", "1", "--backbone-dims", "16", "32", "64",
        "128", "--fpn-channels", "32", "--representation-size", "128"]
TINY_KWARGS = dict(fpn_channels=32, representation_size=128,
                   backbone_kwargs=dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)))
ALL_FIELDS = [f"{iou}_{f}" for iou in ("bbox", "segm") for f in AP_FIELDS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """COCO layout: 4 training and 2 validation images of 64x64 px."""
    return make_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=4, num_val=2, size=(64, 64))


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def _load_ann(root, split="train"):
    with open(coco_split_paths(root, split)[0]) as f:
        return json.load(f)


# -- the model -----------------------------------------------------------------------------------------
def test_parameter_counts_against_the_published_table():
    """fcvit_b12 matches the published 33.7M within 2%; fcvit_b24 cannot match 43.1M (see README):
    the FPN and heads alone are 20.17M and its backbone 26.45M."""
    parts = ["backbone.body", "backbone.fpn", "rpn", "roi_heads"]
    b12 = count_parameters(build_mask_rcnn("fcvit_b12", 80), parts)
    assert b12["total"] == 34_361_621
    assert abs(b12["total"] / 33.7e6 - 1) < 0.02
    b24 = count_parameters(build_mask_rcnn("fcvit_b24", 80), parts)
    assert b24["total"] == 46_620_021
    heads = b12["total"] - b12["backbone.body"]
    assert heads == b24["total"] - b24["backbone.body"] == 20_171_765
    # FPN: 1x1 laterals from 64/128/320/512 channels plus four 3x3 outputs, all 256 wide
    assert b12["backbone.fpn"] == (64 + 128 + 320 + 512) * 256 + 4 * 256 + 4 * (256 * 256 * 9 + 256)


def test_fpn_gives_five_levels_of_256_channels():
    model = build_mask_rcnn("fcvit_tiny", 3, backbone_kwargs=dict(depths=(1, 1, 1, 1)))
    with torch.no_grad():
        levels = model.backbone(torch.randn(1, 3, 128, 192))
    assert list(levels) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[1:]) for v in levels.values()] == [
        (256, 32, 48), (256, 16, 24), (256, 8, 12), (256, 4, 6), (256, 2, 3)]
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background


def test_backbone_starts_from_an_imagenet_checkpoint_and_keeps_its_bn_statistics(tmp_path, shapes):
    import timm

    classifier = timm.create_model("fcvit_tiny", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
    classifier.stem.norm.running_mean.uniform_()  # ImageNet statistics stand-in
    torch.save({"state_dict": classifier.state_dict()}, tmp_path / "imagenet.pth")
    model = build_mask_rcnn("fcvit_tiny", 3, pretrained_backbone=tmp_path / "imagenet.pth", min_size=64,
                            max_size=64, **TINY_KWARGS)
    body = model.backbone.body
    assert torch.equal(body.trunk.stages[1].blocks[0].token_mixer.dw1.weight,
                       classifier.stages[1].blocks[0].token_mixer.dw1.weight)
    stats = body.trunk.stem.norm.running_mean.clone()
    assert torch.equal(stats, classifier.stem.norm.running_mean)

    dataset = CocoInstances(*coco_split_paths(shapes, "train"), train=True, transforms=train_transforms())
    loader = train_module.detection_train_loader(dataset, 2, DistContext(), workers=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def one_epoch(freeze_bn_stats: bool) -> None:  # what the engine's loop does with the step, in short
        step = detection_step(DistContext(), freeze_bn_stats)
        for batch in loader:
            model.train()
            loss, _, _ = step(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    one_epoch(freeze_bn_stats=True)
    assert torch.equal(body.trunk.stem.norm.running_mean, stats)  # frozen statistics...
    assert not torch.equal(body.trunk.stem.norm.weight, classifier.stem.norm.weight)  # ...trained affine
    one_epoch(freeze_bn_stats=False)
    assert not torch.equal(body.trunk.stem.norm.running_mean, stats)


# -- data --------------------------------------------------------------------------------------------------
def test_dataset_maps_noncontiguous_ids_and_builds_masks(shapes):
    ds = CocoInstances(*coco_split_paths(shapes, "train"), train=True, transforms=eval_transforms())
    assert [c.id for c in ds.categories] == [3, 7, 11]
    assert ds.category_names() == ["background", "square", "triangle", "disc"]
    data = _load_ann(shapes)
    image, target = ds[0]
    anns = [a for a in data["annotations"] if a["image_id"] == target["image_id"]]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and image.max() <= 1
    assert target["labels"].tolist() == [{3: 1, 7: 2, 11: 3}[a["category_id"]] for a in anns]
    x, y, w, h = anns[0]["bbox"]
    assert torch.allclose(target["boxes"][0], torch.tensor([x, y, x + w, y + h]))
    # the decoded polygon covers about its area and lies inside its box
    mask = target["masks"][0].bool()
    assert abs(mask.sum().item() - anns[0]["area"]) < 0.15 * anns[0]["area"]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert xs.min() >= math.floor(x) - 1 and xs.max() <= math.ceil(x + w) + 1


def test_flip_moves_boxes_and_masks_with_the_image(shapes):
    plain = CocoInstances(*coco_split_paths(shapes, "train"), train=True, transforms=eval_transforms())
    flipped = CocoInstances(*coco_split_paths(shapes, "train"), train=True, transforms=train_transforms(1.0))
    (img, t), (img_f, t_f) = plain[1], flipped[1]
    assert torch.equal(img_f, img.flip(-1))
    assert torch.equal(t_f["masks"], t["masks"].flip(-1))
    expected = t["boxes"].clone()
    expected[:, [0, 2]] = 64 - t["boxes"][:, [2, 0]]
    assert torch.allclose(t_f["boxes"], expected)


def test_annotation_file_that_does_not_parse(tmp_path, shapes):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [1, 2,')
    with pytest.raises(UserError, match="is not valid JSON .*line 1"):
        CocoInstances(bad, coco_split_paths(shapes, "train")[1])
    bad.write_text('{"images": []}')
    with pytest.raises(UserError, match="has no 'annotations' list"):
        CocoInstances(bad, coco_split_paths(shapes, "train")[1])


def test_missing_image_files(tmp_path, shapes):
    images = tmp_path / "images"
    shutil.copytree(coco_split_paths(shapes, "train")[1], images)
    os.remove(images / "shapes_0002.png")
    with pytest.raises(UserError, match=r"1 of 4 images listed in .* are missing .*first: shapes_0002.png"):
        CocoInstances(coco_split_paths(shapes, "train")[0], images)


def test_zero_size_boxes_are_dropped_counted_and_reported(tmp_path, shapes, caplog):
    data = _load_ann(shapes)
    data["annotations"][0]["bbox"][2] = 0.0  # zero width
    data["annotations"][1]["bbox"][3] = 0.0  # zero height
    data["annotations"][2]["bbox"][:3] = [64.0, 0.0, 0.5]  # at the right edge, within the tolerance: empty once clipped
    ann = _write(tmp_path / "degenerate.json", data)
    with caplog.at_level(logging.WARNING):
        ds = CocoInstances(ann, coco_split_paths(shapes, "train")[1], train=True)
    assert ds.report.degenerate_boxes_dropped == 3
    assert ds.report.annotations == len(data["annotations"]) - 3
    assert "dropped 3 annotations whose box has zero width or height" in caplog.text
    kept_ids = {a["id"] for a in ds.coco.dataset["annotations"]}
    assert not kept_ids & {a["id"] for a in data["annotations"][:3]}
    for i in range(len(ds)):  # what remains is valid for Mask R-CNN: positive width and height
        boxes = ds[i][1]["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_images_without_annotations_kept_for_eval_skipped_for_training(tmp_path, shapes, caplog):
    data = _load_ann(shapes)
    empty_id = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != empty_id]
    ann = _write(tmp_path / "empty.json", data)
    folder = coco_split_paths(shapes, "train")[1]
    with caplog.at_level(logging.WARNING):
        train_set = CocoInstances(ann, folder, train=True)
    assert empty_id not in train_set.ids and len(train_set) == 3
    assert "1 images have no usable annotations; they are skipped for training" in caplog.text
    eval_set = CocoInstances(ann, folder, train=False, transforms=eval_transforms())
    assert empty_id in eval_set.ids and len(eval_set) == 4
    _, target = eval_set[eval_set.ids.index(empty_id)]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 64, 64)


def test_category_ids_unknown_to_the_model_or_the_file(tmp_path, shapes):
    train_set = CocoInstances(*coco_split_paths(shapes, "train"))
    data = _load_ann(shapes)
    data["categories"].append({"id": 42, "name": "star"})
    data["annotations"][0]["category_id"] = 42
    ann = _write(tmp_path / "star.json", data)
    folder = coco_split_paths(shapes, "train")[1]
    with pytest.raises(UserError, match="Category id 42 used in .* is unknown to the model, which knows 3 "
                                        r"categories \(3 \(square\), 7 \(triangle\), 11 \(disc\)\)"):
        CocoInstances(ann, folder, categories=train_set.categories)
    data["categories"].pop()
    ann = _write(tmp_path / "unlisted.json", data)
    with pytest.raises(UserError, match="has category id 42, which is not listed under 'categories'"):
        CocoInstances(ann, folder)


def test_aspect_ratio_batches_are_uniform_and_cover_the_epoch():
    ratios = [1.5, 0.7, 1.3, 0.5, 1.2, 1.1, 0.8, 2.0, 0.6]
    groups = aspect_ratio_groups(ratios)
    sampler = AspectRatioBatchSampler(torch.utils.data.RandomSampler(range(9)), groups, 2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    assert sorted(i for b in batches for i in b) == list(range(9))
    full = [b for b in batches if len(b) == 2]
    assert len(full) >= 3 and sum(len({groups[i] for i in b}) == 1 for b in full) >= 3
    sampler.skip_next(3)
    assert len(list(sampler)) == 2 and len(list(sampler)) == 5  # the skip applies to one pass only


def test_schedule_warmup_and_steps_of_the_1x_recipe():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = build_scheduler(optimizer, iters_per_epoch=100, lr_steps=[8, 11], warmup_iters=500,
                                warmup_factor=0.001)
    lrs = []
    for _ in range(1200):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(2e-7)
    assert lrs[250] == pytest.approx(2e-4 * (0.001 + 0.999 * 0.5))
    assert lrs[500] == lrs[799] == pytest.approx(2e-4)
    assert lrs[800] == lrs[1099] == pytest.approx(2e-5)
    assert lrs[1100] == pytest.approx(2e-6)


# -- metrics -------------------------------------------------------------------------------------------------
def test_evaluator_scores_ground_truth_as_perfect_and_nothing_as_zero(shapes):
    ds = CocoInstances(*coco_split_paths(shapes, "val"), transforms=eval_transforms())
    perfect = CocoEvaluator(ds.coco, ds.categories)
    empty = CocoEvaluator(ds.coco, ds.categories)
    for image, target in (ds[i] for i in range(len(ds))):
        n = len(target["labels"])
        prediction = dict(boxes=target["boxes"].as_subclass(torch.Tensor), labels=target["labels"],
                          scores=torch.linspace(0.9, 0.8, n), masks=target["masks"][:, None].float())
        perfect.update([prediction], [target["image_id"]])
        empty.update([{k: v[:0] for k, v in prediction.items()}], [target["image_id"]])
    good, none = perfect.summarize(), empty.summarize()
    assert set(good) == set(none) == set(ALL_FIELDS)
    assert good["bbox_AP"] == pytest.approx(1.0) and good["segm_AP"] > 0.95
    assert none["bbox_AP"] == 0.0 and none["segm_AP"] == 0.0
    # results go back to the file's own category ids
    assert {d["category_id"] for d in perfect.detections()} <= {3, 7, 11}


# -- end to end through the command line ------------------------------------------------------------------
def _read_summary(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TRAIN_EPOCHS = 12


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """Overfit the 4 training images (validated on themselves): 12 epochs of 2 steps of 2 images.

    A SIGTERM arrives during global step 7 (the first step of epoch 4): the run saves and stops inside
    the epoch. The second run (--resume auto) gets one during step 12, the last of epoch 6: that epoch
    counts as completed. A third run finishes the remaining 12 steps.
    """
    out = tmp_path_factory.mktemp("run")
    ann, images = coco_split_paths(shapes, "train")
    args = ["detect", "train", "--train-ann", ann, "--train-images", images, "--val-ann", ann, "--val-images", images,
            "--output", str(out), *TINY, "--min-size", "64", "--max-size", "64", "-b", "2", "--epochs",
            str(TRAIN_EPOCHS), "--lr", "1e-3", "--warmup-iters", "3", "--lr-steps", str(TRAIN_EPOCHS),
            "--eval-interval", "0", "--workers", "0", "--device", "cpu", "--log-interval", "0", "--resume", "auto",
            "--seed", "0"]
    real_check = loop_module.check_step
    for terminate_at, saved in ((7, (3, 7)), (12, (6, 12)), (None, None)):

        def check(loss, step, *rest):
            if step == terminate_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_check(loss, step, *rest)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop_module, "check_step", check)
            with pytest.raises(SystemExit) as exit_info:
                main(args)
        assert exit_info.value.code == 0
        if saved:
            stopped = read_checkpoint(out / "last.pth.tar")
            assert (stopped["epoch"], stopped["global_step"]) == saved
    return out


def test_sigterm_then_resume_continues_inside_the_epoch(trained):
    rows = _read_summary(trained / "summary.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(TRAIN_EPOCHS))  # counted from 0 in every task, as timm
    assert [int(r["iter"]) for r in rows] == [2 * e for e in range(1, TRAIN_EPOCHS + 1)]
    # the resumed run kept the schedule: warmup (3 steps) was over, so the lr is the full 1e-3
    assert float(rows[3]["lr"]) == pytest.approx(1e-3)
    state = read_checkpoint(trained / "last.pth.tar")
    assert state["epoch"] == TRAIN_EPOCHS and state["global_step"] == 2 * TRAIN_EPOCHS
    assert [c["id"] for c in state["categories"]] == [3, 7, 11]


def test_log_names_the_global_batch_and_the_precision(trained):
    log = (trained / "log.txt").read_text()
    assert "Global batch: 2 images per step (-b 2 per process x 1 process)." in log
    assert "The recipe's lr 2e-4 is for 32 images per step" in log
    assert "Precision: float32 on cpu (the paper's float16 autocast with loss scaling needs CUDA" in log
    assert f"--lr-steps {TRAIN_EPOCHS}: after the last of --epochs {TRAIN_EPOCHS}, so the lr does not drop" in log


def test_lr_steps_after_the_last_epoch_are_named():
    assert late_lr_steps([8, 11], 12) == ""
    assert late_lr_steps([8, 11], 4) == ("--lr-steps 8 11: after the last of --epochs 4, so the lr does not drop "
                                         "there in this run (the 1x schedule steps after epochs 8 and 11 of 12).")
    assert late_lr_steps([2, 12], 12).startswith("--lr-steps 12: after the last of --epochs 12")


def test_training_reduces_the_loss_and_overfits(trained):
    rows = _read_summary(trained / "summary.csv")
    losses = [float(r["train_loss"]) for r in rows]
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3])
    last = rows[-1]
    assert all(last[k] != "" for k in ALL_FIELDS)  # every AP field, evaluated at the end
    assert float(last["bbox_AP"]) > 0.1 and float(last["bbox_AP50"]) > 0.25
    assert float(last["segm_AP"]) > 0.05
    assert (trained / "model_best.pth.tar").is_file()


def test_eval_command_reports_every_field_and_writes_results(trained, shapes, tmp_path, capsys):
    ann, images = coco_split_paths(shapes, "train")
    results = tmp_path / "dets.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "eval", "--val-ann", ann, "--val-images", images, "--checkpoint",
              str(trained / "model_best.pth.tar"), "--results-file", str(results), "--json", "--workers", "0",
              "--device", "cpu"])
    assert exit_info.value.code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == set(ALL_FIELDS)
    summary = _read_summary(trained / "summary.csv")[-1]
    assert metrics["bbox_AP"] == pytest.approx(float(summary["bbox_AP"]), abs=1e-4)
    detections = json.loads(results.read_text())
    assert detections and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(detections[0])
    assert {d["category_id"] for d in detections} <= {3, 7, 11}


def test_eval_refuses_categories_the_model_does_not_know(trained, shapes, tmp_path, capsys):
    data = _load_ann(shapes, "val")
    data["categories"].append({"id": 5, "name": "hexagon"})
    data["annotations"][0]["category_id"] = 5
    ann = _write(tmp_path / "val.json", data)
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "eval", "--val-ann", ann, "--val-images", coco_split_paths(shapes, "val")[1],
              "--checkpoint", str(trained / "last.pth.tar"), "--workers", "0", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Category id 5 used in" in err[0] and "unknown to the model" in err[0]


def test_predict_draws_detections(trained, shapes, tmp_path, capsys):
    folder = coco_split_paths(shapes, "train")[1]
    inputs = [os.path.join(folder, "shapes_0000.png"), os.path.join(folder, "shapes_0001.png")]
    out = tmp_path / "drawn"
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "predict", *inputs, "--checkpoint", str(trained / "model_best.pth.tar"), "--output",
              str(out), "--score-threshold", "0.3", "--json"])
    assert exit_info.value.code == 0
    results = json.loads(capsys.readouterr().out)
    assert [os.path.basename(r["output"]) for r in results] == ["shapes_0000.png", "shapes_0001.png"]
    assert sum(len(r["detections"]) for r in results) > 0
    for r, src in zip(results, inputs):
        drawn = np.array(Image.open(r["output"]))
        assert drawn.shape == (64, 64, 3)
        if r["detections"]:
            assert (drawn != np.array(Image.open(src).convert("RGB"))).any()
    assert json.loads((out / "detections.json").read_text()) == results


def test_predict_rejects_a_classification_checkpoint(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    ckpt = tmp_path / "cls.pth"
    torch.save({"state_dict": {"head.weight": torch.zeros(2, 2)}}, ckpt)
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "predict", str(image), "--checkpoint", str(ckpt), "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "was not written by 'fcvit detect train'" in capsys.readouterr().err


def test_resume_after_sigterm_matches_an_uninterrupted_run(shapes, tmp_path):
    """Same weights, bit for bit, whether or not the run was stopped in the middle of epoch 2 and resumed."""
    ann, images = coco_split_paths(shapes, "train")

    def run(out, terminate_at=None):
        args = ["detect", "train", "--train-ann", ann, "--train-images", images, "--val-ann", ann, "--val-images",
                images, "--output", str(out), *TINY, "--min-size", "64", "--max-size", "64", "-b", "2", "--epochs",
                "2", "--warmup-iters", "2", "--lr-steps", "2", "--eval-interval", "0", "--workers", "0", "--device",
                "cpu", "--log-interval", "0", "--resume", "auto"]
        real_check = loop_module.check_step

        def check(loss, step, *rest):
            if step == terminate_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_check(loss, step, *rest)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop_module, "check_step", check)
            with pytest.raises(SystemExit) as exit_info:
                main(args)
        assert exit_info.value.code == 0

    run(tmp_path / "straight")
    run(tmp_path / "stopped", terminate_at=3)
    assert read_checkpoint(tmp_path / "stopped" / "last.pth.tar")["global_step"] == 3
    run(tmp_path / "stopped")
    straight = read_checkpoint(tmp_path / "straight" / "last.pth.tar")
    resumed = read_checkpoint(tmp_path / "stopped" / "last.pth.tar")
    assert resumed["global_step"] == straight["global_step"] == 4
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])


class _AsInAWorker(torch.utils.data.Dataset):
    """Raises as a DataLoader worker does (the error re-built with the worker's traceback in its message),
    without forking a process inside the test run."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        from torch._utils import ExceptionWrapper

        try:
            return self.dataset[index]
        except Exception:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()


def test_a_corrupt_image_read_in_a_worker_is_one_sentence(tmp_path, shapes):
    images = tmp_path / "images"
    shutil.copytree(coco_split_paths(shapes, "val")[1], images)
    (images / "shapes_0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = CocoInstances(coco_split_paths(shapes, "val")[0], images, transforms=eval_transforms())
    model = build_mask_rcnn("fcvit_tiny", 3, min_size=64, max_size=64, **TINY_KWARGS)
    loader = torch.utils.data.DataLoader(_AsInAWorker(dataset), batch_size=1, collate_fn=collate_detection)
    with pytest.raises(UserError) as info:
        train_module.evaluate(model, loader, dataset, DistContext())
    message = str(info.value)
    assert "shapes_0001.png" in message and "cannot be decoded" in message
    assert "\n" not in message and "Traceback" not in message
