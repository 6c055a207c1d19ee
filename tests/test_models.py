"""FCViT models: exactness against the original implementation and the timm model contract."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import fcvit
from fcvit.models import FCViT, FCViTBackbone, MODEL_CONFIGS, similarity_maps

from conftest import SHARED_FIXTURES, micro_kwargs, shared_fixture

ATOL = 1e-4
PUBLISHED_PARAMS = {
    "fcvit_tiny": 4_784_752,
    "fcvit_b12": 14_701_832,
    "fcvit_b24": 26_960_232,
    "fcvit_b48": 51_477_032,
}


def _micro_model(ref: dict) -> FCViT:
    model = FCViT(**micro_kwargs(ref["config"])).eval()
    model.load_state_dict(ref["state_dict"])
    return model


# --- exactness -----------------------------------------------------------------------------------

def test_micro_logits_and_similarity_match_original(micro_reference):
    model = _micro_model(micro_reference)
    logits, maps = similarity_maps(model, micro_reference["input"], blocks=[-1])
    last = len(fcvit.models.similarity.fcvit_blocks(model)) - 1
    torch.testing.assert_close(logits, micro_reference["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(maps[last]["gc1"], micro_reference["sim_last_gc1"], atol=ATOL, rtol=0)
    torch.testing.assert_close(maps[last]["gc2"], micro_reference["sim_last_gc2"], atol=ATOL, rtol=0)


def test_similarity_capture_leaves_output_unchanged(micro_reference):
    model = _micro_model(micro_reference)
    with torch.no_grad():
        plain = model(micro_reference["input"])
    captured, maps = similarity_maps(model, micro_reference["input"], blocks=None)
    assert torch.equal(plain, captured)
    assert sorted(maps) == list(range(5))
    assert all(m["gc1"].shape[1] == 8 for m in maps.values())
    # hooks are removed afterwards
    assert not any(mod._forward_hooks for mod in model.modules())


def test_similarity_block_out_of_range(micro_reference):
    with pytest.raises(ValueError, match="out of range"):
        similarity_maps(_micro_model(micro_reference), micro_reference["input"], blocks=[5])


def test_micro_backbone_matches_original(micro_features_reference):
    ref = micro_features_reference
    model = FCViTBackbone(**micro_kwargs(ref["config"])).eval()
    model.load_state_dict(ref["state_dict"])
    with torch.no_grad():
        features = model(ref["input"])
    assert len(features) == 4
    for ours, theirs in zip(features, ref["features"]):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_tiny_logits_match_original_square_and_nonsquare():
    ref = shared_fixture("fcvit_tiny_reference.pt")
    model = timm.create_model("fcvit_tiny").eval()
    model.load_state_dict(ref["state_dict"])
    logits, maps = similarity_maps(model, ref["input"], blocks=[-1])
    torch.testing.assert_close(logits, ref["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(maps[12]["gc1"], ref["sim_last_gc1"], atol=ATOL, rtol=0)
    torch.testing.assert_close(maps[12]["gc2"], ref["sim_last_gc2"], atol=ATOL, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["input_nonsquare"]), ref["logits_nonsquare"], atol=ATOL, rtol=0)


def test_tiny_backbone_features_match_original():
    ref = shared_fixture("fcvit_tiny_features_reference.pt")
    model = fcvit.create_backbone("fcvit_tiny").eval()
    model.load_state_dict(ref["state_dict"])
    with torch.no_grad():
        features = model(ref["input"])
    assert [f.shape[-1] for f in features] == [80, 40, 20, 10]
    for ours, theirs in zip(features, ref["features"]):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


# --- sizes and checkpoint key names --------------------------------------------------------------

def _state_dict_shapes(model: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _published(model: torch.nn.Module, entries: list) -> list:
    """The manifest's published keys as the model names them (the load-time remap), in order."""
    return [[k, v] for k, v in fcvit.models.remap_state_dict(model, dict(entries)).items()]


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_param_counts_match_architecture_table(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


def test_state_dict_keys_and_shapes_match_manifest():
    path = SHARED_FIXTURES / "manifest.json"
    if not path.exists():
        pytest.skip(f"{path} not found: it lives in ../shared/fixtures beside the clone")
    manifest = json.loads(path.read_text())
    for name in MODEL_CONFIGS:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert _state_dict_shapes(model) == _published(model, manifest[name]["state_dict"]), name
    for name in ("fcvit_b12", "fcvit_b24"):
        with torch.device("meta"):
            backbone = fcvit.create_backbone(name)
        assert _state_dict_shapes(backbone) == _published(backbone, manifest[f"{name}_feat"]["state_dict"]), name
        assert sum(p.numel() for p in backbone.parameters()) == manifest[f"{name}_feat"]["params"]


def test_drop_path_grows_linearly_over_the_network():
    model = timm.create_model("fcvit_tiny", drop_path_rate=0.1)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for b in fcvit.models.similarity.fcvit_blocks(model)]
    n = len(rates)
    assert rates == pytest.approx([0.1 * i / (n - 1) for i in range(n)])


def test_layer_scale_init_classifier_vs_backbone():
    clf = timm.create_model("fcvit_tiny")
    bb = fcvit.create_backbone("fcvit_tiny")
    assert torch.all(clf.stages[0].blocks[0].layer_scale_1 == 1e-5)
    assert torch.all(bb.trunk.stages[0].blocks[0].layer_scale_1 == 1e-6)


# --- the timm model contract ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model("fcvit_tiny", num_classes=7).eval()


def test_pretrained_cfgs():
    expected_crop = {"fcvit_tiny": 0.9, "fcvit_b12": 0.9, "fcvit_b24": 0.95, "fcvit_b48": 0.95}
    for name, crop in expected_crop.items():
        assert name in timm.list_models("fcvit_*")
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg["input_size"] == (3, 224, 224)
        assert cfg["interpolation"] == "bicubic"
        assert cfg["crop_pct"] == crop
        assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
        state = timm.create_model(name, num_classes=3).state_dict() if name == "fcvit_tiny" else None
        if state is not None:
            assert state[cfg["first_conv"] + ".weight"].shape[1] == 3
            assert state[cfg["classifier"] + ".weight"].shape[0] == 3


def test_create_model_kwargs_reach_the_model():
    model = timm.create_model("fcvit_tiny", num_classes=12, drop_path_rate=0.3, drop_rate=0.2, in_chans=1)
    assert model.num_classes == 12 and model.head.out_features == 12
    assert model.head_drop.p == 0.2
    assert fcvit.models.similarity.fcvit_blocks(model)[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 12)


def test_forward_features_head_and_reset(tiny):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = tiny.forward_features(x)
        assert feats.shape == (2, tiny.num_features, 2, 3)
        assert tiny.head_hidden_size == tiny.num_features == 320
        pre = tiny.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 320)
        torch.testing.assert_close(tiny.forward_head(feats), tiny.get_classifier()(pre))
        torch.testing.assert_close(tiny(x), tiny.forward_head(feats))
    model = timm.create_model("fcvit_tiny", num_classes=7).eval()
    model.reset_classifier(0)
    assert model(x).shape == (2, 320)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 320, 2, 3)
    model.reset_classifier(5, "avg")
    assert model(x).shape == (2, 5)
    unpooled = timm.create_model("fcvit_tiny", num_classes=0, global_pool="")
    assert unpooled(x).shape == (2, 320, 2, 3)


def test_backward_reaches_every_parameter():
    model = timm.create_model("fcvit_tiny", num_classes=4)
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_forward_intermediates_and_pruning(tiny):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = tiny.forward_intermediates(x)
        torch.testing.assert_close(final, tiny.forward_features(x))
        for feat, info in zip(inter, tiny.feature_info):
            assert feat.shape == (1, info["num_chs"], 64 // info["reduction"], 64 // info["reduction"])
        only = tiny.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        assert [f.shape[1] for f in only] == [64, 160]
        early = tiny.forward_intermediates(x, indices=2, stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[-1], inter[-1])
    pruned = timm.create_model("fcvit_tiny")
    kept = pruned.prune_intermediate_layers([1])
    assert kept == [1] and len(pruned.stages) == 2


def test_features_only_and_out_indices():
    model = timm.create_model("fcvit_tiny", features_only=True, out_indices=(0, 2, 3)).eval()
    assert model.feature_info.channels() == [32, 160, 320]
    assert model.feature_info.reduction() == [4, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 16, 16), (1, 160, 4, 4), (1, 320, 2, 2)]


def test_grad_checkpointing_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    model = timm.create_model("fcvit_tiny", num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.stages)
    model(x).sum().backward()
    for ours, ref in zip((p.grad for p in model.parameters()), reference):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_group_matcher_and_layer_decay():
    from timm.models import group_parameters

    model = timm.create_model("fcvit_tiny")
    groups = group_parameters(model, model.group_matcher(), reverse=False)
    assigned = sum(len(v) for v in groups.values())
    assert assigned == len(list(model.named_parameters()))  # every parameter belongs to a group
    assert len(groups) > 5
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 7 + 1  # stem, three downsamples and four stages of blocks, classifier
    # timm's layer-wise lr decay uses the same matcher
    from timm.optim import param_groups_layer_decay

    assert param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    assert model.no_weight_decay() == set()


def test_torchscript_fx_and_in_chans(tiny):
    from timm.layers import set_layer_config
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names

    x = torch.randn(1, 3, 64, 64)
    with set_layer_config(scriptable=True):
        model = timm.create_model("fcvit_tiny", num_classes=7).eval()
    model.load_state_dict(tiny.state_dict())
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), tiny(x), atol=1e-5, rtol=0)
        _, eval_nodes = get_graph_node_names(tiny)
        extractor = create_feature_extractor(tiny, return_nodes=[eval_nodes[-1]])
        torch.testing.assert_close(next(iter(extractor(x).values())), tiny(x), atol=1e-5, rtol=0)


def test_torch_compile_matches_eager(micro_reference):
    model = _micro_model(micro_reference)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: no graph breaks
    with torch.no_grad():
        torch.testing.assert_close(compiled(micro_reference["input"]), micro_reference["logits"],
                                   atol=ATOL, rtol=0)


def test_wrong_input_channels_are_named():
    model = timm.create_model("fcvit_tiny")
    with pytest.raises(Exception, match="channel"):
        model(torch.randn(1, 1, 64, 64))


def test_backbone_interface():
    bb = fcvit.create_backbone("fcvit_b12", out_indices=(1, 2, 3))
    assert bb.channels == [128, 320, 512] and bb.strides == [8, 16, 32] and bb.out_channels == bb.channels
    assert not hasattr(bb, "head")
    assert "fcvit_b12" in timm.list_models() and not any("feat" in n for n in timm.list_models("fcvit*"))
    with torch.no_grad():
        outs = bb.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 320, 512]
