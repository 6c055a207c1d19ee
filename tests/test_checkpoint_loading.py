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
    assert all(k.startswith("norm") and k[4].isdigit() for k in backbone.missing_keys)
    assert "skipped 4 checkpoint keys" in caplog.text
    torch.testing.assert_close(backbone.network[0][0].layer_scale_1, tiny_state["network.0.0.layer_scale_1"])


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
