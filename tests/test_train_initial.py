"""Fine-tuning: `fcvit train --initial-checkpoint` starts from a checkpoint's weights."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch

from fcvit import UserError
from fcvit.tasks.classification.train import create_model


def _args(path: str, model: str = "fcvit_tiny") -> argparse.Namespace:
    return argparse.Namespace(model=model, drop_path=0.0, drop=0.0, model_kwargs=None, initial_checkpoint=path)


def test_initial_checkpoint_for_other_classes_keeps_trunk_and_renews_head(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("fcvit_tiny", num_classes=1000)
    path = tmp_path / "in1k.pth.tar"
    torch.save({"state_dict": source.state_dict()}, path)
    model = create_model(_args(str(path)), num_classes=10)
    assert model.head.out_features == 10
    torch.testing.assert_close(model.stem.proj.weight, source.stem.proj.weight)
    torch.testing.assert_close(model.norm.weight, source.norm.weight)


def test_initial_checkpoint_same_classes_loads_everything(tmp_path):
    source = timm.create_model("fcvit_tiny", num_classes=10)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    model = create_model(_args(str(path)), num_classes=10)
    torch.testing.assert_close(model.head.weight, source.head.weight)


def test_initial_checkpoint_of_another_variant_is_refused(tmp_path):
    with torch.device("meta"):
        b12 = timm.create_model("fcvit_b12")
    path = tmp_path / "b12.pth"
    torch.save({k: torch.zeros(v.shape) for k, v in b12.state_dict().items()}, path)
    with pytest.raises(UserError, match="looks like fcvit_b12"):
        create_model(_args(str(path)), num_classes=1000)
