"""The default Mask R-CNN reproduces the paper's MMDetection 2.19 config, setting by setting.

Each test checks one row of ``docs/reproduction.md`` ("Mask R-CNN on COCO") on the DEFAULT builder
(``build_mask_rcnn`` with no setting passed) or the default command line, and, where torchvision's
behaviour is one flag away, that the flag gives it. Hand computations use small fixed inputs.
"""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, roi_align

from fcvit.cli.main import build_parser
from fcvit.engine import DistContext
from fcvit.errors import UserError
from fcvit.tasks.detection.components import (
    AlignedMultiScaleRoIAlign,
    Float32BoxCoder,
    FlooredMatcher,
    GridAnchorGenerator,
    binary_mask_targets,
)
from fcvit.tasks.detection.model import PAPER_SETTINGS, TORCHVISION_SETTINGS, build_mask_rcnn, with_legacy_settings
from fcvit.tasks.detection.train import (
    PAPER_GLOBAL_BATCH,
    _log_batch,
    build_optimizer,
    detection_amp,
    model_config,
)

SMALL_BACKBONE = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def default_model():
    """The default builder's model: only the backbone is shrunk (FPN 256 channels, 1024-d box head)."""
    torch.manual_seed(0)
    return build_mask_rcnn("fcvit_tiny", 80, backbone_kwargs=SMALL_BACKBONE)


@pytest.fixture(scope="module")
def legacy_model():
    torch.manual_seed(0)
    return build_mask_rcnn("fcvit_tiny", 80, backbone_kwargs=SMALL_BACKBONE, **TORCHVISION_SETTINGS)


def _train_args(*extra: str):
    return build_parser().parse_args(["detect", "train", "--data", "coco", "--output", "out", *extra])


# -- command-line defaults --------------------------------------------------------------------------------
def test_command_line_defaults_are_the_papers():
    args = _train_args()
    assert args.batch_size == 4 and args.lr == 2e-4 and args.weight_decay == 1e-4
    assert args.epochs == 12 and args.lr_steps == [8, 11]
    assert args.warmup_iters == 500 and args.warmup_factor == 0.001
    assert args.min_size == 800 and args.max_size == 1333 and args.flip_prob == 0.5
    assert args.clip_grad is None and args.drop_path == 0.0
    assert args.freeze_bn_stats is False and args.sync_bn is False
    assert args.amp is None and args.amp_dtype == "auto"
    config = model_config(args, 80)
    assert {k: config[k] for k in PAPER_SETTINGS} == PAPER_SETTINGS


def test_each_torchvision_alternative_is_one_flag():
    flags = {"box_loss": ["--box-loss", "smooth_l1"], "roi_align": ["--roi-align", "legacy"],
             "matcher": ["--matcher", "torchvision"], "anchors": ["--anchors", "torchvision"],
             "proposals_train": ["--proposals-train", "2000"], "fpn_init": ["--fpn-init", "kaiming"],
             "head_init": ["--head-init", "torchvision"]}
    assert set(flags) == set(TORCHVISION_SETTINGS)
    for name, flag in flags.items():
        config = model_config(_train_args(*flag), 80)
        assert config[name] == TORCHVISION_SETTINGS[name]
        assert all(config[k] == PAPER_SETTINGS[k] for k in PAPER_SETTINGS if k != name)
    assert _train_args("--freeze-bn-stats").freeze_bn_stats is True
    assert _train_args("--no-amp").amp is False


def test_help_names_the_papers_choice(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["detect", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--box-loss", "--roi-align", "--matcher", "--anchors", "--proposals-train", "--fpn-init",
                 "--head-init", "--freeze-bn-stats", "--sync-bn", "--no-amp"):
        assert flag in text
    assert text.count("the paper's") >= 10


def test_optimizer_decays_every_parameter_without_clipping(default_model):
    args = _train_args()
    optimizer = build_optimizer(default_model, args.lr, args.weight_decay)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(default_model.parameters()))
    assert all(g["weight_decay"] == 1e-4 and g["lr"] == 2e-4 for g in optimizer.param_groups)


# -- batch and precision ----------------------------------------------------------------------------------
def test_global_batch_is_b_times_processes_and_lr_note(caplog):
    with caplog.at_level(logging.INFO, logger="fcvit.tasks.detection.train"):
        _log_batch(4, DistContext(world_size=8), 2e-4)
    assert "Global batch: 32 images per step (-b 4 per process x 8 processes)" in caplog.text
    assert "lr 2e-4 is for" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fcvit.tasks.detection.train"):
        _log_batch(4, DistContext(world_size=1), 2e-4)
    assert "Global batch: 4 images per step (-b 4 per process x 1 process)." in caplog.text
    assert f"lr 2e-4 is for {PAPER_GLOBAL_BATCH} images per step" in caplog.text


def test_default_precision_is_float16_with_loss_scaling_on_cuda_float32_on_cpu():
    cuda = detection_amp(torch.device("cuda"), None, "auto")
    assert cuda.enabled and cuda.dtype is torch.float16 and isinstance(cuda.scaler, torch.amp.GradScaler)
    cpu = detection_amp(torch.device("cpu"), None, "auto")
    assert not cpu.enabled and cpu.describe() == "float32"
    assert not detection_amp(torch.device("cuda"), False, "auto").enabled  # --no-amp
    bf16 = detection_amp(torch.device("cpu"), None, "bfloat16")  # --amp-dtype bfloat16
    assert bf16.enabled and bf16.dtype is torch.bfloat16 and bf16.scaler is None


def test_box_deltas_decode_in_float32(default_model):
    coder = default_model.roi_heads.box_coder
    assert isinstance(coder, Float32BoxCoder) and isinstance(default_model.rpn.box_coder, Float32BoxCoder)
    boxes = coder.decode(torch.zeros(1, 4, dtype=torch.float16), [torch.tensor([[1000.25, 10.0, 1300.75, 20.5]])])
    assert boxes.dtype == torch.float32
    assert torch.allclose(boxes.reshape(4), torch.tensor([1000.25, 10.0, 1300.75, 20.5]))


# -- architecture and test settings -----------------------------------------------------------------------
def test_images_heads_and_test_thresholds(default_model):
    m = default_model
    assert m.transform.min_size == (800,) and m.transform.max_size == 1333 and m.transform.size_divisible == 32
    assert m.transform.image_mean == pytest.approx([0.485, 0.456, 0.406])
    assert m.transform.image_std == pytest.approx([0.229, 0.224, 0.225])
    heads = m.roi_heads
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.05, 0.5, 100)
    assert (heads.box_head.fc6.in_features, heads.box_head.fc6.out_features) == (256 * 7 * 7, 1024)
    assert heads.box_head.fc7.out_features == 1024
    assert heads.box_predictor.cls_score.out_features == 81 and heads.box_predictor.bbox_pred.out_features == 81 * 4
    convs = [c for c in heads.mask_head.modules() if isinstance(c, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(256, 256, (3, 3))] * 4
    deconv = heads.mask_predictor.conv5_mask
    assert (deconv.kernel_size, deconv.stride) == ((2, 2), (2, 2))
    with torch.no_grad():
        logits = heads.mask_predictor(heads.mask_head(torch.zeros(1, 256, 14, 14)))
    assert logits.shape == (1, 81, 28, 28)  # 28x28 per-class masks


def test_box_coder_weights_are_the_inverse_stds(default_model):
    assert default_model.rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)  # stds 1, 1, 1, 1
    assert default_model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)  # stds 0.1, 0.1, 0.2, 0.2


def test_sampler_sizes_and_positive_fractions(default_model):
    rpn, heads = default_model.rpn.fg_bg_sampler, default_model.roi_heads.fg_bg_sampler
    assert (rpn.batch_size_per_image, rpn.positive_fraction) == (256, 0.5)
    assert (heads.batch_size_per_image, heads.positive_fraction) == (512, 0.25)


def test_ground_truth_is_added_to_the_proposals(default_model):
    gt = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    proposals, matched, labels, _ = default_model.roi_heads.select_training_samples(
        [torch.tensor([[200.0, 200.0, 260.0, 260.0]])],
        [{"boxes": gt, "labels": torch.tensor([5]), "masks": torch.zeros(1, 300, 300, dtype=torch.uint8)}])
    assert any(torch.equal(p, gt[0]) for p in proposals[0])
    assert labels[0].tolist().count(5) == 1


def test_proposal_counts_before_and_after_nms(default_model, legacy_model):
    rpn = default_model.rpn
    assert rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}  # per level
    assert rpn._post_nms_top_n == {"training": 1000, "testing": 1000}  # per image
    assert rpn.nms_thresh == 0.7 and rpn.score_thresh == 0.0
    assert legacy_model.rpn._post_nms_top_n["training"] == 2000
    # on a 512 px image (~65,000 anchors) the cut actually binds: 1,000 kept in training and at test
    image = torch.rand(1, 3, 512, 512)
    target = [{"boxes": torch.tensor([[50.0, 60.0, 300.0, 400.0]]), "labels": torch.tensor([1])}]
    images = ImageList(image, [(512, 512)])
    counts = {}
    with torch.no_grad():
        for name, model in (("paper", default_model), ("torchvision", legacy_model)):
            features = model.backbone(image)
            model.rpn.train()
            counts[name, "train"] = len(model.rpn(images, features, target)[0][0])
            model.rpn.eval()
            counts[name, "test"] = len(model.rpn(images, features)[0][0])
    assert counts["paper", "train"] == counts["paper", "test"] == 1000
    assert counts["torchvision", "train"] > 1000


# -- the five losses ----------------------------------------------------------------------------------------
def _smooth_l1(x: float, beta: float = 1 / 9) -> float:
    """torchvision's alternative, by hand: quadratic below beta, linear above."""
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


def test_rpn_losses_by_hand(default_model, legacy_model):
    """Two images, 3 anchors each; every labelled anchor is sampled (far fewer than 256)."""
    labels = [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 0.0])]
    targets = [torch.tensor([[0.5, -0.2, 0.1, 0.0]] * 3), torch.tensor([[0.0, 0.3, -0.4, 0.05]] * 3)]
    deltas = torch.tensor([[0.1, 0.1, 0.1, 0.1], [9.0, 9.0, 9.0, 9.0], [7.0, 7.0, 7.0, 7.0],
                           [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
    objectness = torch.tensor([2.0, -1.0, 0.5, 0.3, 1.5, -2.0])
    objectness_loss, box_loss = default_model.rpn.compute_loss(objectness, deltas, labels, targets)
    # positives: anchor 0 (image 0) and anchor 4 (image 1); 5 sampled anchors (anchor 2 is ignored)
    l1 = (0.4 + 0.3 + 0.0 + 0.1) + (0.0 + 0.3 + 0.4 + 0.05)
    assert box_loss.item() == pytest.approx(l1 / 5)
    sampled = [0, 1, 3, 4, 5]
    expected_bce = F.binary_cross_entropy_with_logits(objectness[sampled], torch.tensor([1.0, 0, 0, 1, 0]))
    assert objectness_loss.item() == pytest.approx(expected_bce.item())
    _, smooth = legacy_model.rpn.compute_loss(objectness, deltas, labels, targets)
    by_hand = sum(_smooth_l1(v) for v in (0.4, 0.3, 0.0, 0.1, 0.0, 0.3, 0.4, 0.05))
    assert smooth.item() == pytest.approx(by_hand / 5)


def test_box_head_losses_by_hand(default_model, legacy_model):
    """Three sampled RoIs (labels 2, background, 1) of a 3-class head: class-specific L1 on the positives."""
    class_logits = torch.tensor([[0.1, 0.2, 3.0], [2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    box_regression = torch.arange(36, dtype=torch.float32).reshape(3, 12) / 10
    labels = [torch.tensor([2, 0]), torch.tensor([1])]
    targets = [torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), torch.tensor([[2.5, 2.5, 2.5, 2.5]])]
    classification, box_loss = default_model.roi_heads.box_losses(class_logits, box_regression, labels, targets)
    # RoI 0, class 2: deltas 0.8 0.9 1.0 1.1 vs 1; RoI 2, class 1: 2.8 2.9 3.0 3.1 vs 2.5
    l1 = (0.2 + 0.1 + 0.0 + 0.1) + (0.3 + 0.4 + 0.5 + 0.6)
    assert box_loss.item() == pytest.approx(l1 / 3)
    assert classification.item() == pytest.approx(F.cross_entropy(class_logits, torch.tensor([2, 0, 1])).item())
    _, smooth = legacy_model.roi_heads.box_losses(class_logits, box_regression, labels, targets)
    by_hand = sum(_smooth_l1(v) for v in (0.2, 0.1, 0.0, 0.1, 0.3, 0.4, 0.5, 0.6))
    assert smooth.item() == pytest.approx(by_hand / 3, rel=1e-5)


def test_torchvision_settings_give_torchvisions_roi_losses():
    """With every alternative chosen, the training step's RoI losses are torchvision's own, to the bit."""
    from torchvision.models.detection.roi_heads import RoIHeads

    torch.manual_seed(0)
    model = build_mask_rcnn("fcvit_tiny", 3, min_size=64, max_size=64, fpn_channels=32, representation_size=64,
                            backbone_kwargs=SMALL_BACKBONE, **TORCHVISION_SETTINGS)
    images = torch.rand(1, 3, 64, 64)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 10:30], masks[1, 30:60, 35:62] = 1, 1
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 30.0, 40.0], [35.0, 30.0, 62.0, 60.0]]),
                "labels": torch.tensor([1, 3]), "masks": masks}]
    with torch.no_grad():
        features = model.backbone(images)
    proposals = [torch.tensor([[8.0, 6.0, 33.0, 41.0], [30.0, 25.0, 60.0, 64.0], [0.0, 0.0, 20.0, 20.0]])]
    model.roi_heads.train()
    torch.manual_seed(1)
    ours = model.roi_heads(features, proposals, [(64, 64)], targets)[1]
    torch.manual_seed(1)
    theirs = RoIHeads.forward(model.roi_heads, features, proposals, [(64, 64)], targets)[1]
    assert ours.keys() == theirs.keys() == {"loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_mask_targets_are_binary_aligned_crops(default_model, legacy_model):
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:20, 10:20] = 1
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [5.0, 10.0, 15.0, 20.0], [12.5, 10.0, 22.5, 20.0]])
    targets = binary_mask_targets(mask, boxes, torch.zeros(3, dtype=torch.int64), 10)
    assert torch.equal(targets[0], torch.ones(10, 10))
    assert torch.equal(targets[1], torch.cat([torch.zeros(10, 5), torch.ones(10, 5)], dim=1))
    # the half-covered column 7 (x 19.5..20.5 at a quarter-pixel offset) rounds at 0.5, as MMDetection's
    assert set(targets[2].unique().tolist()) <= {0.0, 1.0}
    assert default_model.roi_heads.mask_targets == "aligned" and legacy_model.roi_heads.mask_targets == "legacy"
    logits = torch.zeros(3, 2, 10, 10)
    logits[:, 1] = 4.0 * (2 * targets - 1)  # confident and right everywhere
    loss = default_model.roi_heads.mask_loss(logits, [boxes], [mask], [torch.tensor([1])],
                                             [torch.zeros(3, dtype=torch.int64)])
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-4.0)).item())


# -- matching ----------------------------------------------------------------------------------------------
def test_low_quality_matches_need_the_floor(default_model):
    """IoU of 3 ground-truth boxes (rows) with 5 anchors (columns)."""
    iou = torch.tensor([[0.25, 0.10, 0.80, 0.00, 0.00],   # gt 0: best 0.80 (anchor 2)
                        [0.05, 0.35, 0.00, 0.20, 0.00],   # gt 1: best 0.35 >= 0.3 -> anchor 1 positive
                        [0.00, 0.00, 0.00, 0.10, 0.29]])  # gt 2: best 0.29 < 0.3 -> anchor 4 not kept
    matcher = default_model.rpn.proposal_matcher
    assert isinstance(matcher, FlooredMatcher)
    assert (matcher.high_threshold, matcher.low_threshold, matcher.floor) == (0.7, 0.3, 0.3)
    assert matcher(iou.clone()).tolist() == [Matcher.BELOW_LOW_THRESHOLD, 1, 0, Matcher.BELOW_LOW_THRESHOLD,
                                             Matcher.BELOW_LOW_THRESHOLD]
    # torchvision keeps a ground truth's best anchor at any IoU: anchor 4 (0.29) becomes a positive
    assert Matcher(0.7, 0.3, True)(iou.clone()).tolist()[4] == 2


def test_low_quality_ties_go_to_the_last_ground_truth():
    iou = torch.tensor([[0.40, 0.10], [0.40, 0.00]])  # anchor 0 is the best of both boxes
    assert FlooredMatcher(0.7, 0.3, 0.3)(iou.clone()).tolist()[0] == 1  # MMDetection's loop: the last box
    assert Matcher(0.7, 0.3, True)(iou.clone()).tolist()[0] == 0  # torchvision: argmax over boxes


def test_roi_head_matcher_keeps_low_quality_at_half(default_model, legacy_model):
    matcher = default_model.roi_heads.proposal_matcher
    assert (matcher.high_threshold, matcher.low_threshold, matcher.floor) == (0.5, 0.5, 0.5)
    iou = torch.tensor([[0.5, 0.49, 0.9], [0.2, 0.3, 0.0]])
    assert matcher(iou.clone()).tolist() == [0, Matcher.BELOW_LOW_THRESHOLD, 0]
    assert not legacy_model.roi_heads.proposal_matcher.allow_low_quality_matches


# -- anchors and RoIAlign ---------------------------------------------------------------------------------
def test_anchors_one_scale_three_ratios_fixed_strides(default_model, legacy_model):
    generator = default_model.rpn.anchor_generator
    assert isinstance(generator, GridAnchorGenerator)
    assert generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5 and generator.strides == (4, 8, 16, 32, 64)
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)  # ratio 0.5 = height / width, area 32^2
    assert torch.allclose(generator.cell_anchors[0][0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    # an 800 x 1216 batch: the stride-64 level has 13 x 19 cells; its last row sits at 12 x 64
    maps = [torch.zeros(1, 1, math.ceil(800 / s), math.ceil(1216 / s)) for s in (4, 8, 16, 32, 64)]
    images = ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    anchors = generator(images, maps)[0]
    assert anchors.dtype == torch.float32 and len(anchors) == 3 * sum(m.shape[-2] * m.shape[-1] for m in maps)
    last = anchors[-3:]  # bottom-right cell of the last level, ratios 0.5, 1, 2 around (18 x 64, 12 x 64)
    assert torch.allclose((last[:, :2] + last[:, 2:]) / 2, torch.tensor([[18 * 64.0, 12 * 64.0]] * 3))
    legacy = legacy_model.rpn.anchor_generator(images, maps)[0][-3:]
    assert isinstance(legacy_model.rpn.anchor_generator, AnchorGenerator)
    assert torch.allclose((legacy[:, 1] + legacy[:, 3]) / 2, torch.tensor([12 * 61.0] * 3))  # 800 // 13 = 61


def test_roi_align_is_aligned_and_adaptive_for_boxes_and_masks(default_model, legacy_model):
    for pooler, size in ((default_model.roi_heads.box_roi_pool, 7), (default_model.roi_heads.mask_roi_pool, 14)):
        assert isinstance(pooler, AlignedMultiScaleRoIAlign)
        assert pooler.aligned and pooler.sampling_ratio == 0 and pooler.output_size == (size, size)
        assert pooler.strides == (4, 8, 16, 32) and pooler.featmap_names == ["0", "1", "2", "3"]
    legacy = legacy_model.roi_heads.box_roi_pool
    assert type(legacy) is MultiScaleRoIAlign and legacy.sampling_ratio == 2


def test_roi_levels_by_box_scale_and_pooled_values(default_model):
    pooler = default_model.roi_heads.box_roi_pool
    sides = torch.tensor([20.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 1000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    assert pooler.levels(boxes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.manual_seed(1)
    features = {str(i): torch.randn(2, 3, 256 // s, 256 // s) for i, s in enumerate((4, 8, 16, 32))}
    features["pool"] = torch.randn(2, 3, 4, 4)
    box = torch.tensor([[10.3, 20.7, 150.2, 180.9]])  # sqrt(area) ~ 150 -> stride 8
    pooled = pooler(features, [torch.zeros(0, 4), box], [(256, 256), (256, 256)])
    expected = roi_align(features["1"], torch.cat([torch.ones(1, 1), box], 1), (7, 7), spatial_scale=1 / 8,
                         sampling_ratio=0, aligned=True)
    assert torch.allclose(pooled, expected)
    unaligned = roi_align(features["1"], torch.cat([torch.ones(1, 1), box], 1), (7, 7), spatial_scale=1 / 8,
                          sampling_ratio=0, aligned=False)
    assert not torch.allclose(pooled, unaligned)


# -- initialisation and BatchNorm ------------------------------------------------------------------------
def _xavier_bound(conv: nn.Module) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    return math.sqrt(6 / (fan_in + fan_out))


def test_fpn_is_xavier_uniform(default_model, legacy_model):
    convs = [c for c in default_model.backbone.fpn.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 8  # 4 laterals, 4 outputs
    for conv in convs:
        bound = _xavier_bound(conv)
        largest = conv.weight.abs().max().item()
        assert 0.97 * bound < largest <= bound and not conv.bias.any()
    # the 1x1 laterals tell the two inits apart: kaiming-uniform (a=1) is bounded by sqrt(3 / fan_in)
    lateral_16 = default_model.backbone.fpn.inner_blocks[0][0]  # 16 -> 256 channels: xavier 0.149, kaiming 0.433
    assert lateral_16.weight.abs().max() <= _xavier_bound(lateral_16) < 0.9 * math.sqrt(3 / 16)
    lateral_128 = legacy_model.backbone.fpn.inner_blocks[3][0]  # --fpn-init kaiming: 0.153 against xavier's 0.125
    assert lateral_128.weight.abs().max() > 1.2 * _xavier_bound(lateral_128)


def test_head_init_is_mmdetections(default_model, legacy_model):
    head, predictor = default_model.roi_heads.box_head, default_model.roi_heads.box_predictor
    for fc in (head.fc6, head.fc7):
        assert 0.97 * _xavier_bound(fc) < fc.weight.abs().max().item() <= _xavier_bound(fc) and not fc.bias.any()
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert not predictor.cls_score.bias.any() and not predictor.bbox_pred.bias.any()
    mask = default_model.roi_heads.mask_predictor
    assert not mask.conv5_mask.bias.any() and not mask.mask_fcn_logits.bias.any()
    assert legacy_model.roi_heads.mask_predictor.mask_fcn_logits.bias.any()  # torchvision: PyTorch's default


def test_backbone_batchnorm_trains_with_batch_statistics(default_model):
    """No --freeze-bn-stats by default: a training forward pass moves the running statistics."""
    assert _train_args().freeze_bn_stats is False
    body = default_model.backbone.body
    norms = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(isinstance(m, nn.SyncBatchNorm) for m in default_model.modules())
    before = [n.running_mean.clone() for n in norms]
    body.train()
    with torch.no_grad():
        body(torch.rand(2, 3, 64, 64))
    body.eval()
    assert all(not torch.equal(b, n.running_mean) for b, n in zip(before, norms))


# -- settings stored in checkpoints ----------------------------------------------------------------------
def test_old_checkpoint_configs_get_torchvisions_settings():
    old = dict(backbone="fcvit_tiny", num_classes=3, min_size=64, max_size=64)
    assert with_legacy_settings(old) == {**old, **TORCHVISION_SETTINGS}
    assert with_legacy_settings({**old, **PAPER_SETTINGS}) == {**old, **PAPER_SETTINGS}


def test_a_checkpoint_without_settings_loads_as_torchvision_built_it(tmp_path):
    from fcvit.tasks.detection.predict import load_detector

    config = dict(backbone="fcvit_tiny", num_classes=3, min_size=64, max_size=64, fpn_channels=32,
                  representation_size=64, backbone_kwargs=SMALL_BACKBONE)
    trained = build_mask_rcnn(**config, **TORCHVISION_SETTINGS)
    torch.save({"state_dict": trained.state_dict(), "model_config": config,
                "categories": [{"id": i, "name": str(i)} for i in (1, 2, 3)]}, tmp_path / "old.pth.tar")
    model, _, _ = load_detector(tmp_path / "old.pth.tar")
    heads = model.roi_heads
    assert type(heads.box_roi_pool) is MultiScaleRoIAlign and heads.box_loss == "smooth_l1"
    assert type(model.rpn.anchor_generator) is AnchorGenerator and model.rpn._post_nms_top_n["training"] == 2000


def test_unknown_setting_values_are_one_sentence():
    with pytest.raises(UserError, match="box_loss 'huber' is not one of l1 \\(the paper's\\) or smooth_l1"):
        build_mask_rcnn("fcvit_tiny", 3, backbone_kwargs=SMALL_BACKBONE, box_loss="huber")
