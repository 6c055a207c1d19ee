"""The defaults of ``fcvit segment train`` against the paper's MMSegmentation 0.19 Semantic FPN config, setting by
setting: photometric distortion, resizes, SyncBN scope, initialisation, optimizer, schedule, batch and loss.

The OpenCV values below were produced with ``cv2.cvtColor`` of opencv-python-headless 4.5.5 (the mmcv 1.x
era) and 5.0 on an AVX2 machine; both give the same numbers.
"""
from __future__ import annotations

import argparse
import math
import random

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from fcvit.cli.main import build_parser
from fcvit.engine import DistContext
from fcvit.errors import UserError
from fcvit.tasks.segmentation import create_segmenter, train_transforms
from fcvit.tasks.segmentation import model as model_module
from fcvit.tasks.segmentation import photometric
from fcvit.tasks.segmentation.photometric import (
    PhotometricDistortion,
    TorchvisionPhotometricDistortion,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    hsv_to_rgb_opencv,
    photometric_distortion,
    rgb_to_hsv_opencv,
)
from fcvit.tasks.segmentation.train import (
    build_optimizer,
    build_scheduler,
    distributed_batch_norm,
    global_batch,
    segmentation_loss,
)
from fcvit.tasks.segmentation.transforms import IGNORE_INDEX, EvalResize, RandomRescale

TINY_BACKBONE = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
MULTI_GPU = DistContext(rank=0, world_size=8, local_rank=0, device=torch.device("cuda"))  # what torchrun gives


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def default_args() -> argparse.Namespace:
    """``fcvit segment train`` with nothing but the required options."""
    return build_parser().parse_args(["segment", "train", "--data", "ADE", "--output", "run"])


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real photograph, uint8 3 x 96 x 120 (a width that leaves a 24-pixel tail after OpenCV's blocks of 32)."""
    from skimage import data

    return torch.from_numpy(data.astronaut()[100:196, 200:320].copy()).permute(2, 0, 1).contiguous()


def _pixels(*rgb) -> torch.Tensor:
    """A 1-row uint8 image (3 x 1 x N) of the given colours."""
    return torch.tensor(rgb, dtype=torch.uint8).T.reshape(3, 1, len(rgb))


# ---------------------------------------------------------------- command-line defaults

def test_cli_defaults_are_the_papers_settings(default_args):
    a = default_args
    assert a.batch_size == 4  # per process: 8 GPUs x 4 = 32
    assert (a.iters, a.eval_interval, a.crop_size) == (40000, 4000, 512)
    assert (a.lr, a.weight_decay, a.power, a.clip_grad) == (2e-4, 1e-4, 0.9, None)
    assert a.amp is False  # float32
    assert (a.sync_bn, a.photometric, a.antialias, a.norm) == (False, "mmseg", False, "syncbn")
    assert (a.drop_path, a.fpn_channels, a.head_channels, a.no_reduce_zero_label) == (0.0, 256, 128, False)


def test_cli_choices_are_the_tasks_and_help_names_the_papers():
    from fcvit.cli import segment

    assert segment.SYNC_BN_SCOPES == model_module.SYNC_BN_SCOPES
    assert segment.PHOTOMETRIC_CHOICES == photometric.PHOTOMETRIC_CHOICES
    segment_parser = build_parser()._subparsers._group_actions[0].choices["segment"]
    train_parser = segment_parser._subparsers._group_actions[0].choices["train"]
    helps = {option: action.help for action in train_parser._actions for option in action.option_strings}
    for flag in ("--sync-bn", "--photometric", "--antialias", "-b", "--norm"):
        assert "paper" in helps[flag], flag


def test_batch_is_per_process():
    assert global_batch(4, MULTI_GPU) == 32
    assert global_batch(4, DistContext()) == 4
    with pytest.raises(UserError, match="-b 0"):
        global_batch(0, DistContext())


# ---------------------------------------------------------------- photometric distortion

def test_rgb_to_hsv_is_opencvs_8_bit_hsv():
    colours = _pixels((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (10, 20, 30), (200, 100, 50),
                      (255, 0, 1), (128, 128, 128))
    expected = [(0, 255, 255), (60, 255, 255), (120, 255, 255), (30, 255, 255), (105, 170, 30), (10, 191, 200),
                (0, 255, 255), (0, 0, 128)]  # cv2.cvtColor(..., COLOR_RGB2HSV): hue in 2-degree units
    assert rgb_to_hsv_opencv(colours)[:, 0].T.tolist() == [list(e) for e in expected]


def test_hsv_to_rgb_truncates_in_blocks_of_32_and_rounds_the_rest_of_the_row():
    hsv = [(45, 128, 128), (0, 128, 255), (10, 200, 100), (90, 50, 77), (179, 255, 255), (1, 90, 85),
           (107, 30, 165), (170, 51, 195)]
    row = torch.zeros(3, 1, 40, dtype=torch.uint8)
    row[:, 0, :8] = torch.tensor(hsv, dtype=torch.uint8).T
    row[:, 0, 32:] = torch.tensor(hsv, dtype=torch.uint8).T
    rgb = hsv_to_rgb_opencv(row)[:, 0].T.tolist()
    # cv2.cvtColor(..., COLOR_HSV2RGB) of that 40-pixel row: the same colour differs between the two places
    assert rgb[:8] == [[95, 128, 63], [255, 126, 126], [100, 47, 21], [61, 76, 77], [255, 0, 8], [85, 56, 55],
                       [145, 154, 165], [195, 156, 169]]
    assert rgb[32:] == [[96, 128, 64], [255, 127, 127], [100, 48, 22], [62, 77, 77], [255, 0, 8], [85, 56, 55],
                        [146, 154, 165], [195, 156, 169]]


def test_brightness_adds_the_delta_and_contrast_multiplies_without_centring():
    image = _pixels(*[(v, v, v) for v in (0, 10, 100, 250, 255)])
    assert adjust_brightness(image, 20.7)[0, 0].tolist() == [20, 30, 120, 255, 255]  # + delta, clipped, truncated
    assert adjust_brightness(image, -20.7)[0, 0].tolist() == [0, 0, 79, 229, 234]
    assert adjust_contrast(image, 1.5)[0, 0].tolist() == [0, 15, 150, 255, 255]  # x * alpha: 0 stays 0
    assert adjust_contrast(image, 0.5)[0, 0].tolist() == [0, 5, 50, 125, 127]
    # torchvision blends with the mean grey level instead, which lifts black
    assert F.adjust_contrast(image, 0.5)[0, 0, 0] > 0
    assert F.adjust_brightness(image, 1.1)[0, 0].tolist() != adjust_brightness(image, 0.1 * 255)[0, 0].tolist()


def test_saturation_scales_s_and_hue_shifts_wrap_in_180_units():
    red = _pixels((255, 0, 0))
    assert adjust_saturation(red, 0.5)[:, 0, 0].tolist() == [255, 128, 128]  # S 255 -> 127
    assert adjust_saturation(_pixels((90, 90, 90)), 1.5)[:, 0, 0].tolist() == [90, 90, 90]  # grey has no S
    hue = lambda image: int(rgb_to_hsv_opencv(image)[0, 0, 0])  # noqa: E731
    assert hue(adjust_hue(red, 17)) == 17
    assert hue(adjust_hue(red, -18)) == 162  # 0 - 18 wraps to 180 - 18
    magenta_red = hsv_to_rgb_opencv(torch.tensor([170, 255, 255], dtype=torch.uint8).reshape(3, 1, 1))
    assert hue(magenta_red) == 170 and hue(adjust_hue(magenta_red, 18)) == 8  # 188 mod 180


def test_contrast_is_applied_second_or_last(photo):
    steps = dict(brightness=-9.5, contrast=1.4, saturation=1.3, hue=11)
    first = photometric_distortion(photo, contrast_first=True, **steps)
    last = photometric_distortion(photo, contrast_first=False, **steps)
    hsv_steps = lambda image: adjust_hue(adjust_saturation(image, 1.3), 11)  # noqa: E731
    assert torch.equal(first, hsv_steps(adjust_contrast(adjust_brightness(photo, -9.5), 1.4)))
    assert torch.equal(last, adjust_contrast(hsv_steps(adjust_brightness(photo, -9.5)), 1.4))
    assert (first != last).any()
    assert torch.equal(photometric_distortion(photo), photo)  # nothing drawn: unchanged


def test_draws_cover_the_papers_ranges_with_even_odds():
    transform = PhotometricDistortion()
    torch.manual_seed(0)
    draws = [transform.make_params([]) for _ in range(2000)]
    for step in ("brightness", "contrast", "saturation", "hue"):
        applied = [d[step] for d in draws if d[step] is not None]
        assert 0.45 < len(applied) / len(draws) < 0.55, step
    assert 0.45 < sum(d["contrast_first"] for d in draws) / len(draws) < 0.55
    brightness = [d["brightness"] for d in draws if d["brightness"] is not None]
    assert -32 <= min(brightness) < -31 and 31 < max(brightness) <= 32
    for step in ("contrast", "saturation"):
        values = [d[step] for d in draws if d[step] is not None]
        assert 0.5 <= min(values) < 0.52 and 1.48 < max(values) <= 1.5, step
    hues = {d["hue"] for d in draws if d["hue"] is not None}
    assert hues == set(range(-18, 18))  # whole OpenCV hue units; numpy's randint(-18, 18) never gives 18


def test_transform_applies_the_drawn_steps_to_the_image_only(photo):
    transform = PhotometricDistortion(p=1.0)
    mask = tv_tensors.Mask(torch.randint(0, 5, photo.shape[-2:], dtype=torch.uint8))
    torch.manual_seed(3)
    params = transform.make_params([])
    assert None not in params.values()
    torch.manual_seed(3)
    image, out_mask = transform(tv_tensors.Image(photo), mask)
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert torch.equal(image, photometric_distortion(photo, **params))
    assert torch.equal(out_mask, mask)


def test_default_pipeline_is_the_papers_and_torchvisions_is_one_option_away():
    default = train_transforms()
    assert [type(t) for t in default.transforms].count(PhotometricDistortion) == 1
    assert not default.transforms[0].antialias
    alternative = train_transforms(photometric="torchvision", antialias=True)
    assert any(isinstance(t, TorchvisionPhotometricDistortion) for t in alternative.transforms)
    assert alternative.transforms[0].antialias
    with pytest.raises(ValueError, match="photometric"):
        train_transforms(photometric="pil")


# ---------------------------------------------------------------- resizes

def _plain_bilinear(image: torch.Tensor, size) -> torch.Tensor:
    out = TF.interpolate(image[None].float(), size=list(size), mode="bilinear", align_corners=False, antialias=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def test_training_rescale_is_plain_bilinear_without_antialiasing():
    from skimage import data

    image = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1).contiguous()  # 512 x 512
    labels = torch.randint(0, 150, (512, 512), dtype=torch.uint8)
    rescale = RandomRescale(scale=(512, 128), ratio_range=(1.0, 1.0))  # to 128 x 128: a 4x reduction
    out_image, out_mask = rescale(tv_tensors.Image(image), tv_tensors.Mask(labels))
    assert out_image.shape == (3, 128, 128) and out_image.dtype == torch.uint8
    assert (out_image.int() - _plain_bilinear(image, (128, 128)).int()).abs().max() <= 1
    antialiased = F.resize(image, [128, 128], antialias=True)
    assert (out_image.float() - antialiased.float()).abs().mean() > 3  # the smoothing the original did not do
    nearest = TF.interpolate(labels[None, None].float(), size=[128, 128], mode="nearest")[0, 0].to(torch.uint8)
    assert torch.equal(out_mask, nearest)  # labels: cv2 INTER_NEAREST's floor(x * scale) source pixels


def test_training_rescale_truncates_the_scaled_box_like_mmseg(monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda low, high: 0.50075)
    mask = tv_tensors.Mask(torch.zeros(375, 500, dtype=torch.uint8))
    params = RandomRescale((2048, 512), (0.5, 2.0)).make_params([mask])
    # box (int(2048 * 0.50075), int(512 * 0.50075)) = (1025, 256); 375 x 500 fits at 256 x 341.33 -> 341
    # (an untruncated box 256.384 would give 256 x 341.85 -> 342)
    assert params["size"] == [256, 341]


def test_evaluation_resize_is_two_plain_bilinear_steps(photo):
    image = photo[:, :50, :70].contiguous()
    out = EvalResize(short_side=64, max_long_side=256)(tv_tensors.Image(image))
    # AlignResize: imrescale to fit (256, 64) -> 64 x 90 (89.6 rounded), then imresize to multiples of 32
    assert out.shape == (3, 64, 96)
    expected = _plain_bilinear(_plain_bilinear(image, (64, 90)), (64, 96))
    assert (out.int() - expected.int()).abs().max() <= 1


# ---------------------------------------------------------------- model: norms and initialisation

def test_sync_bn_only_in_the_head_after_the_torchrun_step(default_args):
    model = create_segmenter()  # fcvit_b12, 150 classes
    backbone_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert backbone_norms == 4  # stem and three downsamplers
    converted = distributed_batch_norm(model, default_args.norm, default_args.sync_bn, MULTI_GPU)
    backbone_types = [type(m) for m in converted.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    head_types = [type(m) for m in converted.head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert backbone_types == [nn.BatchNorm2d] * 4  # plain: each GPU's own batch statistics
    assert head_types == [nn.SyncBatchNorm] * 7
    everything = distributed_batch_norm(create_segmenter("fcvit_tiny", 3, backbone_kwargs=TINY_BACKBONE), "syncbn",
                                        True, MULTI_GPU)
    assert not any(type(m) is nn.BatchNorm2d for m in everything.modules())
    alone = distributed_batch_norm(create_segmenter("fcvit_tiny", 3, backbone_kwargs=TINY_BACKBONE), "syncbn",
                                   False, DistContext())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in alone.modules())  # one process: nothing to sync


def test_fpn_is_xavier_uniform_and_the_classifier_normal_001():
    torch.manual_seed(0)
    model = create_segmenter()
    for conv, fan_in in zip(model.fpn.inner_blocks, (64, 128, 320, 512)):  # 1x1 laterals to 256
        weight = conv[0].weight
        bound = math.sqrt(6 / (fan_in + 256))  # xavier; torchvision's kaiming (a=1) would be sqrt(3 / fan_in)
        assert weight.abs().max() <= bound and weight.abs().max() > 0.97 * bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert torch.count_nonzero(conv[0].bias) == 0
    for conv in model.fpn.layer_blocks:  # 3x3, 256 -> 256
        assert conv[0].weight.abs().max() <= math.sqrt(6 / (2 * 256 * 9))
        assert torch.count_nonzero(conv[0].bias) == 0
    classifier = model.head.classifier
    assert classifier.weight.shape == (150, 128, 1, 1)
    assert classifier.weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert abs(classifier.weight.mean().item()) < 0.0005 and torch.count_nonzero(classifier.bias) == 0
    head_conv = model.head.scale_heads[1][0][0]  # ConvModule: kaiming normal, fan_out, relu; no bias before BN
    assert head_conv.bias is None
    assert head_conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)


def test_head_upsamples_bilinearly_without_aligned_corners():
    model = create_segmenter("fcvit_tiny", 3, backbone_kwargs=TINY_BACKBONE)
    upsample = model.head.scale_heads[3][1]
    x = torch.randn(1, 2, 3, 5)
    assert torch.equal(upsample(x), TF.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
    assert isinstance(model.head.dropout, nn.Dropout2d) and model.head.dropout.p == 0.1


# ---------------------------------------------------------------- optimizer, schedule, loss

def test_optimizer_is_adamw_on_every_parameter_with_one_decay(default_args):
    model = create_segmenter("fcvit_tiny", 3, backbone_kwargs=TINY_BACKBONE)
    optimizer = build_optimizer(model, default_args)
    assert type(optimizer) is torch.optim.AdamW and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}  # biases and norms too
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (2e-4, 1e-4, (0.9, 0.999), 1e-8)


def test_poly_schedule_per_iteration_to_zero_without_warmup(default_args):
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=default_args.lr)
    scheduler = build_scheduler(optimizer, default_args)
    assert optimizer.param_groups[0]["lr"] == 2e-4  # iteration 0: the full lr, no warmup
    for done in (1, 100, 4000, 20000, 39999):
        scheduler.step_update(num_updates=done)  # after ``done`` iterations: mmcv's (1 - iter / max_iters)^0.9
        assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * (1 - done / 40000) ** 0.9, rel=1e-9)
    scheduler.step_update(num_updates=40000)
    assert optimizer.param_groups[0]["lr"] == 0.0


def test_loss_is_averaged_over_all_pixels_with_ignored_ones_counting_zero():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 0] = IGNORE_INDEX
    per_pixel = TF.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    labelled = target != IGNORE_INDEX
    assert segmentation_loss(logits, target).item() == pytest.approx(per_pixel[labelled].sum().item() / target.numel())
    assert segmentation_loss(logits, torch.full_like(target, IGNORE_INDEX)).item() == 0.0
