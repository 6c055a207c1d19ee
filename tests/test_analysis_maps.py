"""The maps read and drawn are the ones the models compute: FCViT similarity (fixture) and ViT attention."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from conftest import micro_kwargs
from fcvit.analysis import ViTAttention, analyze_attention, analyze_similarity, fcvit_similarity, query_attention
from fcvit.analysis.attention import split_prefix
from fcvit.analysis.plots import draw_attention, draw_measures, draw_similarity, save_figure
from fcvit.errors import UserError
from fcvit.models import FCViT


@pytest.fixture(scope="module")
def micro_fcvit(micro_reference):
    model = FCViT(**micro_kwargs(micro_reference["config"]))
    model.load_state_dict(micro_reference["state_dict"])
    return model.eval()


def tiny_vit(distilled=False, seed=0):
    torch.manual_seed(seed)
    cls = VisionTransformerDistilled if distilled else VisionTransformer
    return cls(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, num_classes=5).eval()


def png_array(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def test_similarity_maps_drawn_are_the_fixture_maps(micro_fcvit, micro_reference):
    x = micro_reference["input"]
    block, maps = fcvit_similarity(micro_fcvit, x, block=-1)
    assert block == 4  # 1 + 1 + 2 + 1 blocks
    for name in ("gc1", "gc2"):
        torch.testing.assert_close(maps[name], micro_reference[f"sim_last_{name}"], atol=1e-5, rtol=1e-4)
    photo = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    for b in range(x.shape[0]):
        fig = draw_similarity(photo, {k: v[b] for k, v in maps.items()})
        axes = np.array(fig.axes[:18]).reshape(2, 9)
        for r, name in enumerate(("gc1", "gc2")):
            for g in range(8):
                drawn = axes[r, g + 1].images[-1].get_array()
                np.testing.assert_allclose(drawn, micro_reference[f"sim_last_{name}"][b, g].numpy(), atol=1e-5)


def test_similarity_block_out_of_range_is_a_user_error(micro_fcvit, micro_reference):
    with pytest.raises(UserError, match="has 5 blocks"):
        fcvit_similarity(micro_fcvit, micro_reference["input"], block=5)


@pytest.mark.parametrize("distilled", [False, True])
def test_vit_attention_is_the_softmax_of_the_blocks_queries_and_keys(distilled):
    model = tiny_vit(distilled)
    x = torch.randn(2, 3, 64, 64)
    expected_logits = model(x)
    inputs = {}
    handles = [blk.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
               for i, blk in enumerate(model.blocks)]
    reader = ViTAttention(model)
    maps = reader(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(model(x), expected_logits, atol=1e-5, rtol=1e-5)  # outputs unchanged
    n = 16 + (2 if distilled else 1)
    assert reader.num_prefix_tokens == n - 16
    for i, attn in maps.items():
        mod = model.blocks[i].attn
        b, tokens, c = inputs[i].shape
        qkv = mod.qkv(inputs[i]).reshape(b, tokens, 3, mod.num_heads, c // mod.num_heads).permute(2, 0, 3, 1, 4)
        manual = ((qkv[0] * mod.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
        assert attn.shape == (2, 2, n, n)
        torch.testing.assert_close(attn, manual, atol=1e-5, rtol=1e-4)


def test_attention_forced_uniform_measures_irrelevance_one_and_entropy_one():
    model = tiny_vit(distilled=True)
    with torch.no_grad():
        for blk in model.blocks:  # q = k = 0: every query attends equally to every token
            dim = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * dim] = 0
            blk.attn.qkv.bias[: 2 * dim] = 0
    rows = analyze_attention(model, [torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)])
    assert [r["block"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["query_irrelevance"] == pytest.approx(1.0, abs=1e-5)
        assert r["head_irrelevance"] == pytest.approx(1.0, abs=1e-5)
        assert r["entropy"] == pytest.approx(1.0, abs=1e-5)
        assert r["prefix_mass"] == pytest.approx(2 / 18, abs=1e-5)  # 2 prefix tokens of 18


def test_attention_forced_onto_self_measures_low_irrelevance_and_full_sparsity():
    model = tiny_vit()
    with torch.no_grad():
        model.pos_embed.normal_(0, 30.0)  # tokens dominated by distinct position vectors
        for blk in model.blocks:
            dim = blk.attn.qkv.in_features
            blk.norm1.weight.fill_(1.0)
            blk.norm1.bias.zero_()
            blk.attn.qkv.weight[:dim] = torch.eye(dim) * 30  # q = k = normalised token, large: softmax picks self
            blk.attn.qkv.weight[dim:2 * dim] = torch.eye(dim) * 30
            blk.attn.qkv.bias.zero_()
    row = analyze_attention(model, [torch.zeros(1, 3, 64, 64)])[0]
    assert row["query_irrelevance"] < 0.05
    assert row["top1pct_mass"] > 0.95
    assert row["entropy"] < 0.05


def test_query_points_select_the_patch_under_them():
    model = tiny_vit(distilled=True)
    reader = ViTAttention(model, blocks=[-1])
    x = torch.randn(1, 3, 64, 64)
    # image 640 x 320: the 4 x 4 grid's patches are 160 x 80 pixels; (500, 250) is row 3, column 3
    points, maps, labels, prefix = query_attention(reader, x, 2, (640, 320), [(500, 250)], random_queries=2,
                                                   head="all")
    assert len(points) == len(maps) == 3 and labels == ["head 0", "head 1"]
    spatial, prefix_mass = split_prefix(reader(x)[2][0], 2)
    torch.testing.assert_close(maps[0], spatial[:, 15].reshape(2, 4, 4))
    assert 0 < prefix < 1
    _, mean_maps, mean_labels, _ = query_attention(reader, x, 2, (640, 320), [(500, 250)], head="mean")
    torch.testing.assert_close(mean_maps[0][0], spatial[:, 15].mean(0).reshape(4, 4))
    with pytest.raises(UserError, match="head"):
        query_attention(reader, x, 2, (640, 320), [(1, 1)], head=7)


def test_non_vit_models_are_refused_in_one_sentence(micro_fcvit):
    with pytest.raises(UserError, match="not one of timm's ViT/DeiT"):
        ViTAttention(micro_fcvit)
    with pytest.raises(UserError, match="not an FCViT"):
        analyze_similarity(tiny_vit(), [torch.randn(1, 3, 64, 64)])


def test_figures_have_content_and_are_written_atomically(tmp_path, micro_fcvit):
    photo = np.asarray(Image.new("RGB", (96, 64), (120, 90, 60)))
    model = tiny_vit()
    reader = ViTAttention(model, blocks=[-1])
    points, maps, labels, _ = query_attention(reader, torch.randn(1, 3, 64, 64), 2, (96, 64), [(10, 10)], 1)
    pixels = png_array(draw_attention(photo, points, maps, labels))
    assert pixels.std() > 20  # image, overlay, colour bar and text, not a blank canvas
    rows = analyze_similarity(micro_fcvit, [torch.randn(1, 3, 64, 64)])
    assert {r["module"] for r in rows} == {"gc1", "gc2"} and len(rows) == 10
    out = save_figure(draw_measures(rows, ["group_correlation", "entropy"]), str(tmp_path / "m.png"))
    assert Image.open(out).size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temporary file left behind


def test_fcvit_keeps_the_aspect_ratio_and_vits_take_their_own_size(micro_fcvit):
    from fcvit.analysis import image_to_tensor, input_size_of

    assert input_size_of(micro_fcvit, 224, (451, 300)) == (224, 352)  # the cat: 451 x 300, sides multiple of 32
    assert input_size_of(micro_fcvit, 96, (300, 451)) == (160, 96)
    assert input_size_of(micro_fcvit, 64) == (64, 64)
    assert input_size_of(tiny_vit(), 224, (451, 300)) == (64, 64)
    x = image_to_tensor(Image.new("RGB", (451, 300), (255, 255, 255)), micro_fcvit, (224, 352))
    assert x.shape == (1, 3, 224, 352)
    torch.testing.assert_close(x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_a_negative_head_counts_from_the_end():
    """--head -1 is offered by the help; a plain slice maps[-1:0] gave zero-column maps."""
    reader = ViTAttention(tiny_vit(distilled=True), blocks=[-1])
    x = torch.randn(1, 3, 64, 64)
    _, maps, labels, _ = query_attention(reader, x, 2, (640, 320), [(500, 250)], head=-1)
    _, every, _, _ = query_attention(reader, x, 2, (640, 320), [(500, 250)], head="all")
    assert labels == ["head 1"]
    torch.testing.assert_close(maps[0][0], every[0][1])
