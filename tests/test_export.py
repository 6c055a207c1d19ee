"""Exports: ONNX (dynamic batch, onnxruntime equals PyTorch to 1e-4), TorchScript, safetensors, the CLI."""
from __future__ import annotations

import pytest
import torch

import fcvit
from fcvit.errors import UserError
from fcvit.tools.export import check_onnx, export_onnx, export_safetensors, export_torchscript
from fcvit.cli.main import main
from fcvit.models import FCViT, read_checkpoint, extract_state_dict, remap_state_dict

from conftest import micro_kwargs

ATOL = 1e-4


@pytest.fixture
def micro_model(micro_reference) -> FCViT:
    model = FCViT(**micro_kwargs(micro_reference["config"])).eval()
    model.load_state_dict(micro_reference["state_dict"])
    return model


@pytest.mark.parametrize("fuse", [False, True])
def test_onnx_matches_pytorch_with_dynamic_batch(micro_model, micro_reference, tmp_path, fuse):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    model = fcvit.fuse(micro_model) if fuse else micro_model
    path = export_onnx(model, tmp_path / "m.onnx", img_size=64)
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not fixed to the export batch of 1

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = micro_reference["input"]  # batch 2, 64 x 96: another batch size and shape than exported
    x3 = torch.cat([x, x.flip(0), x * 0.5])
    for inputs, expected in ((x, micro_reference["logits"]), (x3, None)):
        (out,) = session.run(None, {"images": inputs.numpy()})
        if expected is None:
            with torch.no_grad():
                expected = micro_model(inputs)
        torch.testing.assert_close(torch.from_numpy(out), expected, atol=ATOL, rtol=0)
    assert check_onnx(micro_model, path, x) <= ATOL
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


def test_torchscript_export_runs_without_fcvit(micro_model, micro_reference, tmp_path):
    path = export_torchscript(fcvit.fuse(micro_model), tmp_path / "m.pt")
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(micro_reference["input"]), micro_reference["logits"], atol=ATOL, rtol=0)


def test_safetensors_export_loads_back(micro_model, micro_reference, tmp_path):
    path = export_safetensors(micro_model, tmp_path / "m.safetensors", metadata={"arch": "micro"})
    state_dict = extract_state_dict(read_checkpoint(path))
    model = FCViT(**micro_kwargs(micro_reference["config"])).eval()
    assert set(state_dict) == set(remap_state_dict(model, micro_reference["state_dict"]))
    model.load_state_dict(state_dict)
    with torch.no_grad():
        torch.testing.assert_close(model(micro_reference["input"]), micro_reference["logits"], atol=ATOL, rtol=0)


def test_export_to_missing_folder_is_a_user_error(micro_model, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        export_safetensors(micro_model, tmp_path / "nowhere" / "m.safetensors")


def test_cli_export_checkpoint_to_torchscript_and_safetensors(micro_model, tmp_path, capsys):
    # a checkpoint of fcvit_tiny's shape, written like a training script does
    tiny = fcvit.create_classifier("fcvit_tiny", num_classes=5)
    ckpt = tmp_path / "tiny.pth.tar"
    torch.save({"state_dict": tiny.state_dict(), "epoch": 3}, ckpt)
    ts = tmp_path / "tiny.pt"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", "fcvit_tiny", "--checkpoint", str(ckpt), "--format", "torchscript", "--fuse",
              "--img-size", "32", "-o", str(ts)])
    assert exc.value.code == 0
    assert "(ok)" in capsys.readouterr().out
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), tiny.eval()(x), atol=ATOL, rtol=0)

    st = tmp_path / "tiny.safetensors"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", "fcvit_tiny", "--checkpoint", str(ckpt), "--format", "safetensors", "-o", str(st)])
    assert exc.value.code == 0
    reloaded = fcvit.create_classifier("fcvit_tiny", checkpoint_path=str(st)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), tiny(x), atol=0, rtol=0)


@pytest.mark.parametrize("argv, message", [
    (["--format", "safetensors", "--fuse"], "export safetensors without --fuse"),
    (["--format", "onnx", "--checkpoint", "missing.pth"], "missing.pth"),
    (["--format", "onnx", "--model", "fcvit_tinny"], "Unknown model"),
])
def test_cli_export_user_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["export"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
