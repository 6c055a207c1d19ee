"""``fcvit convert`` (timm hub-format folders for ``local-dir:``) and ``pretrained=True`` without weights."""
import hashlib
import json
import os

import pytest
import timm
import torch
from safetensors.torch import load_file

import fcvit  # noqa: F401  (registers the models)
from fcvit.cli.main import main
from fcvit.models import PUBLISHED_WEIGHTS_URL, PretrainedWeightsUnavailable
from fcvit.errors import UserError


def run_cli(capsys, *argv: str):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model("fcvit_tiny").eval()


@pytest.fixture(scope="module")
def published(tiny, tmp_path_factory):
    """A file shaped like the published ones: timm's training checkpoint with 'arch' and 'state_dict'."""
    path = tmp_path_factory.mktemp("published") / "fcvit_tiny.pth.tar"
    torch.save({"epoch": 299, "arch": "fcvit_tiny", "state_dict": tiny.state_dict(), "version": 2}, path)
    return str(path)


def test_convert_writes_a_folder_timm_loads_with_the_same_logits(capsys, tmp_path, tiny, published):
    out_dir = tmp_path / "fcvit_tiny"
    before = _sha(published)
    code, out, err = run_cli(capsys, "convert", published, "--output", str(out_dir))
    assert code == 0, err
    assert "max |difference| 0.0e+00" in out
    assert sorted(os.listdir(out_dir)) == ["README.md", "config.json", "model.safetensors"]
    assert _sha(published) == before

    weights = load_file(str(out_dir / "model.safetensors"))
    assert set(weights) == set(tiny.state_dict())  # the published key names
    config = json.loads((out_dir / "config.json").read_text())
    assert config["architecture"] == "fcvit_tiny"
    assert config["num_classes"] == 1000 and config["num_features"] == 320
    assert config["pretrained_cfg"]["crop_pct"] == 0.9 and config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    card = (out_dir / "README.md").read_text()
    for needle in ("fcvit_tiny", "fcvit_tiny.pth.tar", before, "74.9%", "license: apache-2.0",
                   "A Close Look at Spatial Modeling: From Attention to Convolution"):
        assert needle in card

    loaded = timm.create_model(f"local-dir:{out_dir}", pretrained=True)
    assert torch.equal(_logits(loaded), _logits(tiny))
    assert loaded.pretrained_cfg["crop_pct"] == 0.9


def test_convert_infers_the_variant_from_shapes_and_keeps_the_number_of_classes(capsys, tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("fcvit_tiny", num_classes=7)
    ckpt = tmp_path / "finetuned.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ckpt)  # bare, DDP-prefixed, no 'arch'
    code, out, err = run_cli(capsys, "convert", str(ckpt), "--output", str(tmp_path / "out"))
    assert code == 0, err
    assert "fcvit_tiny, 7 classes" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_classes"] == 7
    assert "7-class" in (tmp_path / "out" / "README.md").read_text()
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    assert torch.equal(_logits(loaded), _logits(model))


def test_convert_reads_ema_weights_on_request(capsys, tmp_path, tiny):
    torch.manual_seed(2)
    ema = timm.create_model("fcvit_tiny").state_dict()
    ckpt = tmp_path / "ema.pth.tar"
    torch.save({"arch": "fcvit_tiny", "state_dict": tiny.state_dict(), "state_dict_ema": ema}, ckpt)
    code, _, err = run_cli(capsys, "convert", str(ckpt), "--output", str(tmp_path / "ema"), "--use-ema")
    assert code == 0, err
    weights = load_file(str(tmp_path / "ema" / "model.safetensors"))
    assert torch.equal(weights["head.weight"], ema["head.weight"])


def test_convert_refuses_a_non_empty_folder_unless_overwrite(capsys, tmp_path, published):
    out_dir = tmp_path / "busy"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "convert", published, "--output", str(out_dir))
    assert code == 2 and "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert os.listdir(out_dir) == ["notes.txt"]
    code, _, err = run_cli(capsys, "convert", published, "--output", str(out_dir), "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ["README.md", "config.json", "model.safetensors", "notes.txt"]


@pytest.mark.parametrize("case", ["missing", "corrupt", "foreign_arch", "foreign_shapes", "input_in_output",
                                  "output_is_file", "unknown_model", "wrong_model"])
def test_convert_errors_are_one_sentence(capsys, tmp_path, published, case):
    out_dir = tmp_path / "out"
    argv = [published, "--output", str(out_dir)]
    if case == "missing":
        argv[0] = str(tmp_path / "nope.pth.tar")
    elif case == "corrupt":
        argv[0] = str(tmp_path / "cut.pth.tar")
        with open(published, "rb") as f:
            open(argv[0], "wb").write(f.read()[:5000])
    elif case == "foreign_arch":
        argv[0] = str(tmp_path / "resnet.pth.tar")
        torch.save({"arch": "resnet18", "state_dict": timm.create_model("resnet18").state_dict()}, argv[0])
    elif case == "foreign_shapes":
        argv[0] = str(tmp_path / "resnet.pth")
        torch.save(timm.create_model("resnet18").state_dict(), argv[0])
    elif case == "input_in_output":
        out_dir.mkdir()
        argv[0] = str(out_dir / "model.safetensors")
        from safetensors.torch import save_file
        save_file(torch.load(published, weights_only=True)["state_dict"], argv[0])
        argv += ["--overwrite"]
    elif case == "output_is_file":
        out_dir.write_text("x")
    elif case == "unknown_model":
        argv += ["--model", "fcvit_b13"]
    elif case == "wrong_model":
        argv += ["--model", "fcvit_b12"]
    before = _sha(argv[0]) if os.path.isfile(argv[0]) else None
    code, _, err = run_cli(capsys, "convert", *argv)
    assert code == 2
    assert err.startswith("fcvit convert: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    expected = {"missing": "does not exist", "corrupt": "is incomplete or damaged", "foreign_arch": "resnet18",
                "foreign_shapes": "FCViT variant", "input_in_output": "write over the checkpoint",
                "output_is_file": "is a file", "unknown_model": "fcvit_b12",
                "wrong_model": "looks like fcvit_tiny"}[case]
    assert expected in err
    if before is not None:
        assert _sha(argv[0]) == before
    if case not in ("input_in_output", "output_is_file"):
        assert not out_dir.exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # no staging folder left behind


def test_pretrained_without_weights_says_where_they_are(monkeypatch):
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    for name in ("load_state_dict_from_url", "download_cached_file", "load_state_dict_from_hf"):
        monkeypatch.setattr(builder, name, no_network)
    for kwargs in ({}, {"features_only": True}):
        with pytest.raises(RuntimeError) as info:
            timm.create_model("fcvit_b12", pretrained=True, **kwargs)
        assert isinstance(info.value, (PretrainedWeightsUnavailable, UserError))
        message = str(info.value)
        assert PUBLISHED_WEIGHTS_URL == "https://github.com/ma-xu/FCViT/releases"
        for needle in (PUBLISHED_WEIGHTS_URL, "checkpoint_path=", "fcvit convert", "local-dir:"):
            assert needle in message
        assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message


def test_published_file_loads_by_checkpoint_path_and_file_overlay(tmp_path, tiny, published):
    by_path = timm.create_model("fcvit_tiny", checkpoint_path=published)
    assert torch.equal(_logits(by_path), _logits(tiny))
    by_overlay = timm.create_model("fcvit_tiny", pretrained=True, pretrained_cfg_overlay={"file": published})
    assert torch.equal(_logits(by_overlay), _logits(tiny))
