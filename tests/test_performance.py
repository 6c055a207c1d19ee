"""The fast implementation: fused inference path, exact folds, the original-style reference, the benchmark."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import fcvit
from fcvit.tools.benchmark import Candidate, format_table, run_benchmark
from fcvit.cli.main import main
from fcvit.models import FCViT, remap_state_dict, similarity_maps
from fcvit.models.layers import FCViTBlock, GlobalContext
from fcvit.ops import mixers

from conftest import REPO_DIR, fused_ops, micro_kwargs

ATOL = 1e-4


def _micro_model(ref: dict) -> FCViT:
    model = FCViT(**micro_kwargs(ref["config"])).eval()
    model.load_state_dict(ref["state_dict"])
    return model


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the blocks whose channel mixer ran the inference operator (oneDNN-fused in CPU float32)."""
    calls = []
    original = mixers._channel_mixer_infer_part

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(mixers, "_channel_mixer_infer_part", spy)
    return calls


def _original_module():
    sys.path.insert(0, str(REPO_DIR / "benchmarks"))
    try:
        import original_fcvit
    finally:
        sys.path.remove(str(REPO_DIR / "benchmarks"))
    return original_fcvit


# --- the fused CPU inference path ------------------------------------------------------------------

@pytest.mark.skipif(not mixers.HAS_ONEDNN, reason="this PyTorch has no oneDNN: no fused path")
def test_fused_path_runs_in_inference_and_matches_fixture(micro_reference, fused_calls):
    model = _micro_model(micro_reference)
    with torch.inference_mode():
        fused = model(micro_reference["input"])
    assert len(fused_calls) == 5  # every block of the micro model (1 + 1 + 2 + 1)
    torch.testing.assert_close(fused, micro_reference["logits"], atol=ATOL, rtol=0)
    # the similarity hooks still see the maps on the fused path
    _, maps = similarity_maps(model, micro_reference["input"])
    torch.testing.assert_close(maps[4]["gc1"], micro_reference["sim_last_gc1"], atol=ATOL, rtol=0)
    torch.testing.assert_close(maps[4]["gc2"], micro_reference["sim_last_gc2"], atol=ATOL, rtol=0)


def test_plain_path_where_fusion_does_not_apply(micro_reference, fused_calls):
    model = _micro_model(micro_reference)
    x = micro_reference["input"]
    with torch.enable_grad():
        eval_with_grad = model(x)  # autograd on: the training operators, which keep what backward needs
    with fused_ops(False, model):
        with torch.no_grad():
            switched_off = model(x)
    assert fused_calls == []
    torch.testing.assert_close(eval_with_grad.detach(), micro_reference["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(switched_off, micro_reference["logits"], atol=ATOL, rtol=0)


def test_fused_path_accepts_nchw_input_to_a_block(micro_reference):
    block = _micro_model(micro_reference).stages[0].blocks[0]
    x = torch.randn(2, 16, 12, 10)  # contiguous NCHW, not channels-last
    with torch.no_grad():
        fused = block(x)
        with fused_ops(False, block):
            plain = block(x)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)


def test_global_context_equals_the_architecture_arithmetic():
    torch.manual_seed(0)
    gc = GlobalContext(32).eval()
    with torch.no_grad():
        gc.rescale_weight.uniform_(0.5, 1.5)
        gc.rescale_bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 32, 5, 7)
    # the specification, step by step, in NCHW with broadcasts (docs/fcvit-architecture.md)
    b, c, h, w = x.shape
    g = x.mean(dim=(2, 3))
    s = (x.reshape(b, 8, 4, h, w) * g.reshape(b, 8, 4, 1, 1)).sum(2) * 4 ** -0.5
    flat = s.reshape(b, -1)
    s = (s - flat.mean(1).reshape(b, 1, 1, 1)) / (flat.std(1).reshape(b, 1, 1, 1) + 1e-5)
    s = s * gc.rescale_weight.reshape(1, 8, 1, 1) + gc.rescale_bias.reshape(1, 8, 1, 1)
    gvec = gc.fc2(gc.fc1(g).reshape(b, 2, 4).max(1).values)
    expected = (s.unsqueeze(2) * gvec.reshape(b, 8, 4, 1, 1)).reshape(b, c, h, w)
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(gc(inp), expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(gc.add_context(inp), inp + expected, atol=1e-5, rtol=0)
    assert "group_mask" not in gc.state_dict()  # the published keys only


def test_gradients_equal_the_original_implementation(micro_reference):
    """Training runs the rewritten ops (batched-matmul context, folded layer scale): same gradients."""
    original = _original_module().OriginalFCViT(
        micro_reference["config"]["layers"], micro_reference["config"]["embed_dims"],
        num_classes=micro_reference["config"]["num_classes"])
    original.load_state_dict(micro_reference["state_dict"])
    model = _micro_model(micro_reference)
    x, target = micro_reference["input"], torch.tensor([3, 7])
    for m in (original, model):
        m.train()
        nn.functional.cross_entropy(m(x), target).backward()
    grads = remap_state_dict(model, dict(original.named_parameters()))  # published names -> timm's layout
    for name, p in model.named_parameters():
        ref = grads[name].grad
        torch.testing.assert_close(p.grad, ref, atol=1e-5 + 1e-3 * ref.abs().max().item(), rtol=1e-3, msg=name)


def test_original_style_reference_matches_fixture(micro_reference):
    original_fcvit = _original_module()
    for channels_last in (False, True):
        model = original_fcvit.OriginalFCViT(
            micro_reference["config"]["layers"], micro_reference["config"]["embed_dims"],
            num_classes=micro_reference["config"]["num_classes"], channels_last=channels_last).eval()
        model.load_state_dict(micro_reference["state_dict"])  # strict: the same keys as fcvit
        with torch.no_grad():
            torch.testing.assert_close(model(micro_reference["input"]), micro_reference["logits"], atol=ATOL, rtol=0)


# --- fcvit.fuse -----------------------------------------------------------------------------------

def test_fuse_folds_exactly_and_leaves_the_original_alone(micro_reference):
    model = _micro_model(micro_reference)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fcvit.fuse(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    blocks = [m for m in fused.modules() if isinstance(m, FCViTBlock)]
    assert all(torch.equal(b.layer_scale_2, torch.ones_like(b.layer_scale_2)) for b in blocks)
    assert all(not b.norm2.affine for b in blocks)
    assert not torch.equal(blocks[0].layer_scale_1, torch.ones_like(blocks[0].layer_scale_1))  # not foldable
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"fuse changed the input model's {k}"
    x = micro_reference["input"]
    for fused_inference in (True, False):
        with fused_ops(fused_inference, fused):
            with torch.no_grad():
                torch.testing.assert_close(fused(x), micro_reference["logits"], atol=ATOL, rtol=0)


def test_fuse_backbone_keeps_features(micro_features_reference):
    from fcvit.models import FCViTBackbone

    ref = micro_features_reference
    backbone = FCViTBackbone(**micro_kwargs(ref["config"])).eval()
    backbone.load_state_dict(ref["state_dict"])
    with torch.no_grad():
        for got, expected in zip(fcvit.fuse(backbone)(ref["input"]), ref["features"]):
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


# --- the benchmark ----------------------------------------------------------------------------------

def _tiny_candidate(label: str, holder: list | None = None, **kwargs) -> Candidate:
    def build() -> nn.Module:
        model = FCViT(depths=(1, 1, 1, 1), dims=(16, 16, 16, 16), num_classes=10)
        if holder is not None:
            holder.append(model)
        return model

    return Candidate(label, build, **kwargs)


def test_run_benchmark_interleaves_and_reports_ratios():
    results = run_benchmark(
        [_tiny_candidate("peer"), _tiny_candidate("plain", fast_paths=False)], mode="infer",
        batch_size=2, img_size=32, warmup=1, iters=1, rounds=3, peer="peer", num_classes=10)
    assert [r.model for r in results] == ["peer", "plain"]
    for r in results:
        assert len(r.step_ms_rounds) == 3 and r.step_ms > 0
        assert r.images_per_s == pytest.approx(2 / r.step_ms * 1000, rel=0.01)
        assert r.params > 0 and r.gmacs > 0 and r.peak_memory_mb is not None and r.peak_memory_mb > 0
    assert results[0].ratio == 1.0
    assert results[1].ratio == pytest.approx(results[1].images_per_s / results[0].images_per_s, abs=1e-3)
    assert "| plain | infer |" in format_table(results)


def test_run_benchmark_train_mode_updates_weights():
    holder: list = []
    run_benchmark([_tiny_candidate("m", holder)], mode="train", batch_size=2, img_size=32, warmup=0,
                  iters=1, rounds=1, measure_memory=False, num_classes=10)
    model = holder[0]
    assert model.training
    fresh = FCViT(depths=(1, 1, 1, 1), dims=(16, 16, 16, 16), num_classes=10)
    assert model.head.weight.shape == fresh.head.weight.shape
    assert all(p.grad is not None for p in model.parameters())


def test_candidate_without_cpu_shortcuts_runs_the_previous_model():
    from fcvit.ops import depthwise

    def shortcuts():  # the depth-wise weight-gradient method a 14x14 map gets, and the CPU batch slices
        return depthwise._pick_method(torch.empty(1, 1, 14, 14)), dict(mixers.CPU_SLICE_BYTES)

    seen: dict = {"previous": [], "default": []}

    def probe(label: str):
        class Probe(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.head = nn.Linear(3, 10)

            def forward(self, x):
                seen[label].append(shortcuts())
                return self.head(x.mean((2, 3)))
        return Probe

    before = shortcuts()
    run_benchmark([Candidate("previous", probe("previous"), cpu_shortcuts=False), Candidate("default", probe("default"))],
                  mode="train", batch_size=2, img_size=8, warmup=0, iters=1, rounds=1, measure_memory=False,
                  num_classes=10)
    assert ("native", {"grad": 0, "mlp": 0, "no_grad": 0}) in seen["previous"]  # the timed step
    assert seen["default"] and set(map(str, seen["default"])) == {str(before)}
    assert shortcuts() == before  # restored


def test_benchmark_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--model", "fcvit_tiny", "--compare", "convnext_atto", "--img-size", "32", "-b", "2",
              "--warmup", "0", "--iters", "1", "--rounds", "2", "--no-memory", "--json", str(out)])
    assert exc.value.code == 0
    table = capsys.readouterr().out
    assert "| convnext_atto | infer |" in table and "| fcvit_tiny | infer |" in table
    payload = json.loads(out.read_text())
    by_model = {r["model"]: r for r in payload["results"]}
    assert by_model["convnext_atto"]["ratio"] == 1.0 and by_model["fcvit_tiny"]["peer"] == "convnext_atto"
    assert by_model["fcvit_tiny"]["params"] == 4_784_752


@pytest.mark.parametrize("argv, message", [
    (["--model", "fcvit_tinny"], "Unknown model 'fcvit_tinny'"),
    (["--model", "fcvit_tiny", "--device", "tpu"], "Unknown device 'tpu'"),
    (["--model", "fcvit_tiny", "--rounds", "0"], "at least 1, got 0"),
])
def test_benchmark_cli_user_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--compare", "", "--img-size", "32", "-b", "1"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_peak_memory_measurement_prints_no_profiler_noise(capfd):
    """The profiler behind the CPU peak-memory figure writes trace lines natively; none reach the user."""
    from fcvit.tools.benchmark import _cpu_peak_memory_mb

    peak = _cpu_peak_memory_mb(lambda: torch.randn(256, 256).sum())
    assert peak is not None and peak > 0
    out, err = capfd.readouterr()
    assert "USDT" not in out + err and "profiler_start" not in out + err


def test_fused_copy_keeps_the_fast_inference_path(micro_reference, fused_calls):
    """``fcvit.fuse`` drops norm2's affine; the channel-mixer operator still runs and matches the fixture."""
    fused = fcvit.fuse(_micro_model(micro_reference))
    with torch.inference_mode():
        out = fused(micro_reference["input"])
    assert len(fused_calls) == 5
    torch.testing.assert_close(out, micro_reference["logits"], atol=ATOL, rtol=0)
