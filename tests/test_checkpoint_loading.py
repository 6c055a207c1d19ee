"""Checkpoint loading in every form the published files take, and the refusals with clear messages."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

import fcvit
from fcvit import UserError
from fcvit.models import FCViT, create_classifier, guess_variant, read_checkpoint

from conftest import micro_kwargs

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(1)
    model = timm.create_model("fcvit_tiny", num_classes=10)
    # move layer scales away from 1e-5 so that a wrong load would change the outputs
    for name, p in model.named_parameters():
        if "layer_scale" in name:
            p.data.fill_(0.2)
    return model.eval().state_dict()


@pytest.fixture(scope="module")
def tiny_io(tiny_state):
    x = torch.randn(1, 3, 64, 64)
    reference = timm.create_model("fcvit_tiny", num_classes=10).eval()
    reference.load_state_dict(tiny_state)
    with torch.no_grad():
        return x, reference(x)


def _forms(state: dict) -> dict:
    """The published files' layouts: bare, wrapped, DDP-prefixed, with a timm-style training header."""
    prefixed = {f"module.{k}": v for k, v in state.items()}
    header = dict(epoch=299, arch="fcvit_tiny", version=2, optimizer={"state": {}, "param_groups": []},
                  args=argparse.Namespace(model="fcvit_tiny", lr=1e-3, drop_path=0.1))
    return {
        "bare": state,
        "state_dict": {"state_dict": state, **header},
        "state_dict_ema": {"state_dict": {k: torch.zeros_like(v) for k, v in state.items()},
                           "state_dict_ema": state, **header},
        "model": {"model": prefixed},
        "module_prefix": {"state_dict": prefixed, **header},
    }


@pytest.mark.parametrize("form", ["bare", "state_dict", "state_dict_ema", "model", "module_prefix", "safetensors"])
def test_classifier_loads_every_form(tmp_path, tiny_state, tiny_io, form):
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    else:
        path = tmp_path / "w.pth.tar"
        torch.save(_forms(tiny_state)[form], path)
    x, expected = tiny_io
    with torch.no_grad():
        ours = create_classifier("fcvit_tiny", checkpoint_path=path).eval()
        torch.testing.assert_close(ours(x), expected, atol=ATOL, rtol=0)
        # timm's own entry point reads the same files (it also loads with weights_only=True)
        via_timm = timm.create_model("fcvit_tiny", num_classes=10, checkpoint_path=str(path)).eval()
        torch.testing.assert_close(via_timm(x), expected, atol=ATOL, rtol=0)


def test_backbone_accepts_classification_checkpoint(tmp_path, tiny_state, caplog):
    path = tmp_path / "clf.pth.tar"
    torch.save({"state_dict": tiny_state}, path)
    with caplog.at_level("WARNING"):
        backbone = fcvit.create_backbone("fcvit_tiny", checkpoint_path=path)
    assert sorted(backbone.skipped_keys) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert all(k.startswith("norms.") for k in backbone.missing_keys)
    assert "skipped 4 checkpoint keys" in caplog.text
    torch.testing.assert_close(backbone.trunk.stages[0].blocks[0].layer_scale_1,
                               tiny_state["stages.0.blocks.0.layer_scale_1"])


def test_backbone_loads_backbone_checkpoint(tmp_path, micro_features_reference):
    ref = micro_features_reference
    path = tmp_path / "bb.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref["state_dict"].items()}}, path)
    config = ref["config"]
    model = fcvit.create_backbone("fcvit_tiny", checkpoint_path=path, depths=config["layers"],
                                  dims=config["embed_dims"], mlp_ratios=config["mlp_ratios"]).eval()
    assert model.skipped_keys == [] and model.missing_keys == []
    with torch.no_grad():
        for ours, theirs in zip(model(ref["input"]), ref["features"]):
            torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


class _RunsCode:
    """Unpickling this would execute a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, tiny_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_state, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(UserError, match="refused"):
        read_checkpoint(path)
    with pytest.raises(UserError):
        create_classifier("fcvit_tiny", checkpoint_path=path)
    with pytest.raises(UserError):
        fcvit.create_backbone("fcvit_tiny", checkpoint_path=path)
    assert not marker.exists()


def test_wrong_variant_names_the_variant_and_shapes(tmp_path):
    with torch.device("meta"):
        b12 = timm.create_model("fcvit_b12")
    state = {k: torch.zeros(v.shape) for k, v in b12.state_dict().items()}
    assert guess_variant(state) == "fcvit_b12"
    path = tmp_path / "b12.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError) as err:
        create_classifier("fcvit_tiny", checkpoint_path=path)
    message = str(err.value)
    assert "looks like fcvit_b12" in message and "differing shapes" in message and "--model fcvit_b12" in message
    assert "\n" not in message


def test_missing_truncated_and_foreign_files(tmp_path, tiny_state):
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    good = tmp_path / "good.pth"
    torch.save(tiny_state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated"):
        read_checkpoint(truncated)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="safetensors"):
        read_checkpoint(bad_st)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(UserError, match="does not look like FCViT"):
        create_classifier("fcvit_tiny", checkpoint_path=foreign)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UserError, match="did you mean fcvit_b12"):
        fcvit.models.check_model_name("fcvit_b13")
    with pytest.raises(UserError, match="did you mean fcvit_tiny"):
        fcvit.create_backbone("fcvit-tiny")


def test_micro_fixture_through_the_loader(tmp_path, micro_reference):
    path = tmp_path / "micro.pth.tar"
    torch.save({"state_dict": micro_reference["state_dict"], "args": argparse.Namespace(model="micro")}, path)
    model = FCViT(**micro_kwargs(micro_reference["config"])).eval()
    fcvit.models.load_weights(model, fcvit.models.extract_state_dict(read_checkpoint(path)), "micro")
    with torch.no_grad():
        torch.testing.assert_close(model(micro_reference["input"]), micro_reference["logits"], atol=ATOL, rtol=0)


def test_import_registers_models_in_a_fresh_interpreter():
    code = "import timm, fcvit; m = timm.create_model('fcvit_b12', num_classes=3); print(m.num_classes)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


# --- the published flat layout (patch_embed, network.N, norm0/2/4/6) by every route ---------------------

def _micro_classifier(ref: dict, **kwargs) -> torch.nn.Module:
    return timm.create_model("fcvit_tiny", **micro_kwargs(ref["config"]), **kwargs).eval()


def _assert_logits(model: torch.nn.Module, ref: dict) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ref["input"]), ref["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("form", ["bare", "state_dict", "state_dict_ema", "model", "module_prefix", "safetensors"])
def test_published_layout_loads_every_form(tmp_path, micro_reference, form):
    published = micro_reference["state_dict"]
    assert "network.1.proj.weight" in published and "patch_embed.proj.weight" in published
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in published.items()}, str(path))
    else:
        path = tmp_path / "w.pth.tar"
        torch.save(_forms(published)[form], path)
    kwargs = micro_kwargs(micro_reference["config"])
    _assert_logits(create_classifier("fcvit_tiny", checkpoint_path=path, **kwargs), micro_reference)
    _assert_logits(_micro_classifier(micro_reference, checkpoint_path=str(path)), micro_reference)


def test_published_layout_loads_as_initial_checkpoint(tmp_path, micro_reference):
    from fcvit.tasks.classification.train import load_initial_weights

    path = tmp_path / "w.pth.tar"
    torch.save({"state_dict": micro_reference["state_dict"]}, path)
    model = _micro_classifier(micro_reference)
    load_initial_weights(model, str(path), "fcvit_tiny")
    _assert_logits(model, micro_reference)
    other = timm.create_model("fcvit_tiny", **{**micro_kwargs(micro_reference["config"]), "num_classes": 3})
    load_initial_weights(other, str(path), "fcvit_tiny")  # a new head, the published trunk
    torch.testing.assert_close(other.stages[1].downsample.proj.weight, micro_reference["state_dict"]["network.1.proj.weight"])


def test_run_written_in_the_published_layout_resumes_with_its_optimizer_and_ema(tmp_path, micro_reference):
    from timm.utils import ModelEmaV3

    from fcvit.engine.checkpoint import restore_train_state

    writer = _micro_classifier(micro_reference)
    optimizer = torch.optim.AdamW(writer.parameters())
    writer(micro_reference["input"]).sum().backward()
    optimizer.step()
    path = tmp_path / "last.pth.tar"
    torch.save(dict(state_dict=micro_reference["state_dict"], state_dict_ema=micro_reference["state_dict"],
                    optimizer=optimizer.state_dict(), epoch=3, global_step=30, args={"model": "fcvit_tiny"}), path)
    model = _micro_classifier(micro_reference)
    ema = ModelEmaV3(model)
    resumed = torch.optim.AdamW(model.parameters())
    counters = restore_train_state(read_checkpoint(path), model, resumed, model_ema=ema, restore_rng=False)
    assert counters == {"epoch": 3, "global_step": 30}
    _assert_logits(model, micro_reference)
    _assert_logits(ema.module, micro_reference)
    for ours, theirs in zip(model.parameters(), writer.parameters()):  # parameter order unchanged
        torch.testing.assert_close(resumed.state[ours]["exp_avg"], optimizer.state[theirs]["exp_avg"])


def test_hub_folder_written_in_the_published_layout_loads(tmp_path, micro_reference):
    import json

    from timm.models import save_for_hf

    save_for_hf(_micro_classifier(micro_reference), str(tmp_path), safe_serialization=True)
    save_file({k: v.contiguous() for k, v in micro_reference["state_dict"].items()}, str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["pretrained_cfg"]["first_conv"] = "patch_embed.proj"  # what the folder's config named then
    (tmp_path / "config.json").write_text(json.dumps(config))
    kwargs = {k: v for k, v in micro_kwargs(micro_reference["config"]).items() if k != "num_classes"}
    _assert_logits(timm.create_model(f"local-dir:{tmp_path}", pretrained=True, **kwargs), micro_reference)


def _assert_features(backbone: torch.nn.Module, ref: dict) -> None:
    with torch.no_grad():
        for ours, theirs in zip(backbone.eval()(ref["input"]), ref["features"]):
            torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_published_layout_detection_and_segmentation_checkpoints_load(micro_features_reference):
    from fcvit.tasks.detection.model import build_mask_rcnn
    from fcvit.tasks.segmentation.model import create_segmenter

    ref = micro_features_reference
    config = ref["config"]
    shape = dict(depths=config["layers"], dims=config["embed_dims"], mlp_ratios=config["mlp_ratios"])
    segmenter = create_segmenter("fcvit_tiny", num_classes=3, fpn_channels=32, head_channels=16, backbone_kwargs=shape)
    state = {k: v for k, v in segmenter.state_dict().items() if not k.startswith("backbone.")}
    state.update({f"backbone.{k}": v for k, v in ref["state_dict"].items()})
    fcvit.models.load_weights(segmenter, state, "Semantic FPN (fcvit_tiny)")
    _assert_features(segmenter.backbone, ref)
    detector = build_mask_rcnn("fcvit_tiny", 3, min_size=64, max_size=64, fpn_channels=32, representation_size=128,
                               backbone_kwargs=shape)
    state = {k: v for k, v in detector.state_dict().items() if not k.startswith("backbone.body.")}
    state.update({f"backbone.body.{k}": v for k, v in ref["state_dict"].items()})
    detector.load_state_dict(state)
    _assert_features(detector.backbone.body, ref)
