"""Issue 22, deployment: the ONNX graph a runtime can optimise (node count, parity with PyTorch, --static,
--fuse, metadata), the eager outputs its export-only forms leave unchanged, and `fcvit benchmark --runtime`."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import timm
import torch

import fcvit
from fcvit.cli.main import main
from fcvit.models.layers import GlobalContext, PointwiseConv
from fcvit.ops import onnx_forms
from fcvit.tools.benchmark import parse_runtimes
from fcvit.tools.export import check_onnx, export_onnx, onnx_metadata, simplify_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4
MAX_NODES = 1000  # issue 22: the fcvit_tiny graph (4,363 nodes before)


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights with nothing left at an initial constant (a trained checkpoint's case): the rescale
    weights and norms start at ones, which the export would otherwise drop as multiplications by one."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return _trained_like(timm.create_model("fcvit_tiny"))


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx", img_size=64,
                       metadata=onnx_metadata(tiny, name="fcvit_tiny"))


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _run(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def test_fcvit_tiny_onnx_graph_is_at_most_1000_nodes_without_shape_arithmetic(tiny_onnx):
    ops = _ops(tiny_onnx)
    assert sum(ops.values()) <= MAX_NODES, ops.most_common(10)
    # what the runtime-unfriendly export was made of: constants as nodes, layout shuffles, reshapes per use
    assert ops["Constant"] == ops["Identity"] == ops["Transpose"] == ops["Concat"] == ops["Unsqueeze"] == 0
    assert ops["Shape"] == 26  # one per global context: the count of its unbiased std, with dynamic sizes
    assert ops["LayerNormalization"] == 27 and ops["Gelu"] == 65  # every GroupNorm(1) and GELU one node


def test_fcvit_tiny_onnx_matches_pytorch_at_other_batch_and_size(tiny, tiny_onnx):
    batch_dim = onnx.load(str(tiny_onnx)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    for shape in ((3, 3, 64, 96), (1, 3, 96, 64)):  # exported with 1 x 3 x 64 x 64
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = tiny(x)  # the eager fast paths, as a user runs the model
        torch.testing.assert_close(_run(tiny_onnx, x), expected, atol=ATOL, rtol=0)


def test_static_onnx_has_fixed_shape_fewer_nodes_and_matches(tiny, tiny_onnx, tmp_path):
    path = export_onnx(tiny, tmp_path / "static.onnx", img_size=64, static=True, batch_size=2)
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 64, 64]
    static_ops = _ops(path)
    assert static_ops["Shape"] == 0 and sum(static_ops.values()) < sum(_ops(tiny_onnx).values())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert check_onnx(tiny, path, x) <= ATOL


def test_fuse_removes_nodes_and_keeps_outputs(tiny, tiny_onnx, tmp_path):
    fused = fcvit.fuse(tiny)
    path = export_onnx(fused, tmp_path / "fused.onnx", img_size=64)
    before, after = sum(_ops(tiny_onnx).values()), sum(_ops(path).values())
    assert after == before - len(fused.stages[0].blocks) - sum(len(s.blocks) for s in fused.stages[1:])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(_run(path, x), tiny(x), atol=ATOL, rtol=0)


def test_onnx_metadata_carries_preprocessing_and_class_names(tiny_onnx):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert props["model"] == "fcvit_tiny"
    assert json.loads(props["input_size"]) == [3, 224, 224] and float(props["crop_pct"]) == 0.9
    assert props["interpolation"] == "bicubic"
    np.testing.assert_allclose(json.loads(props["mean"]), [0.485, 0.456, 0.406])
    np.testing.assert_allclose(json.loads(props["std"]), [0.229, 0.224, 0.225])
    names = json.loads(props["class_names"])
    assert len(names) == 1000 and names[0].startswith("tench")


def test_cli_export_static_onnx_with_a_checkpoints_classes_and_data_config(tmp_path, capsys):
    model = fcvit.create_classifier("fcvit_tiny", num_classes=3)
    ckpt = tmp_path / "tiny.pth.tar"
    torch.save({"state_dict": model.state_dict(), "class_names": ["cat", "dog", "owl"],
                "data_config": {"input_size": [3, 160, 160], "crop_pct": 1.0, "interpolation": "bilinear",
                                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}, ckpt)
    out = tmp_path / "tiny.onnx"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--static", "-b", "2", "--img-size", "64",
              "--fuse", "-o", str(out)])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "fixed 2x3x64x64" in printed and "check: batch 2 (the fixed shape)" in printed and "(ok)" in printed
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["class_names"]) == ["cat", "dog", "owl"] and props["num_classes"] == "3"
    assert json.loads(props["input_size"]) == [3, 64, 64]  # what the static file takes
    assert props["interpolation"] == "bilinear" and json.loads(props["mean"]) == [0.5, 0.5, 0.5]


def test_batch_size_without_static_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["export", "--format", "onnx", "-b", "4"])
    assert exc.value.code == 2 and "add --static" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_forms_leave_eager_outputs_unchanged():
    """The export-only forms replace nothing outside an export: eager equals the layers' original expressions."""
    gc = GlobalContext(32).eval()
    with torch.no_grad():
        gc.rescale_weight.normal_()
        gc.rescale_bias.normal_()
    pw = PointwiseConv(32, 48)
    x = torch.randn(2, 32, 9, 7).contiguous(memory_format=torch.channels_last)
    b, c, h, w = x.shape
    with torch.no_grad():
        g = x.mean(dim=(2, 3))
        sim = (x.reshape(b, 8, 4, h, w) * g.reshape(b, 8, 4, 1, 1)).sum(2) * gc.scale
        flat = sim.reshape(b, -1)
        sim = (sim - flat.mean(1).reshape(b, 1, 1, 1)) / (flat.std(1).reshape(b, 1, 1, 1) + gc.eps)
        sim = sim * gc.rescale_weight.reshape(1, -1, 1, 1) + gc.rescale_bias.reshape(1, -1, 1, 1)
        ctx = gc.fc2(gc.fc1(g).reshape(b, 2, gc.hidden).amax(dim=1))
        expected = (sim.unsqueeze(2) * ctx.reshape(b, 8, 4, 1, 1)).reshape(b, c, h, w)
        assert torch.equal(gc(x), expected)
        linear = torch.nn.functional.linear(x.permute(0, 2, 3, 1), pw.weight.flatten(1), pw.bias).permute(0, 3, 1, 2)
        assert torch.equal(pw(x), linear)
    assert not onnx_forms.exporting()


def test_group_norm_symbolic_is_registered_only_while_exporting(tmp_path):
    from torch.onnx._internal.torchscript_exporter import registration

    group = registration.registry.get_function_group("aten::group_norm")
    before = group.get(20)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.GroupNorm(2, 4)).eval()
    path = export_onnx(model, tmp_path / "gn.onnx", img_size=8)  # two groups: torch's own form, still exact
    assert group.get(20) is before
    x = torch.randn(2, 3, 8, 8)
    assert check_onnx(model, path, x) <= ATOL


def test_simplify_keeps_a_multiplication_by_ones_that_broadcasts():
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "ones_wide"], ["y"]), helper.make_node("Mul", ["y", "one"], ["z"]),
         helper.make_node("Identity", ["z"], ["out"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 1, 3), np.float32), "ones_wide"),
         numpy_helper.from_array(np.ones((1,), np.float32), "one")])
    model = simplify_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in model.graph.node] == ["Mul", "Identity"]  # the broadcasting Mul stays
    assert [t.name for t in model.graph.initializer] == ["ones_wide"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (out,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert out.shape == (2, 2, 3) and np.array_equal(out[0], x)


def test_parse_runtimes():
    assert parse_runtimes("eager, compile,onnxruntime") == ["eager", "compile-default", "compile-frozen",
                                                             "onnxruntime"]
    assert parse_runtimes("compile-frozen,eager,compile-frozen") == ["compile-frozen", "eager"]


def test_benchmark_cli_compares_runtimes_and_batch_sizes_in_one_table(tmp_path, capsys):
    results = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--runtime", "eager,onnxruntime", "--model", "fcvit_tiny", "--compare", "convnext_atto",
              "--img-size", "64", "-b", "1,2", "--warmup", "0", "--iters", "2", "--rounds", "1", "--no-memory",
              "--results-file", str(results)])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "# allocator: " in out and "spin-waiting off" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "images/s" not in line]
    assert len(rows) == 8  # 2 models x 2 runtimes x 2 batch sizes
    for runtime in ("eager", "onnxruntime"):
        for batch in (1, 2):
            assert f"| fcvit_tiny | infer | {runtime} | {batch} |" in out
            assert f"| convnext_atto | infer | {runtime} | {batch} |" in out
    payload = json.loads(results.read_text())
    assert payload["runtimes"] == ["eager", "onnxruntime"] and payload["allocator"]
    ort_rows = [r for r in payload["results"] if r["runtime"] == "onnxruntime"]
    assert all(r["max_diff"] is not None and r["max_diff"] <= ATOL for r in ort_rows)
    peer = [r for r in ort_rows if r["model"] == "convnext_atto"]
    assert all(r["ratio"] == 1.0 and r["vs_eager"] > 0 for r in peer)


@pytest.mark.parametrize("argv, message", [
    (["--runtime", "tensorrt"], "Unknown runtime 'tensorrt'"),
    (["--runtime", "onnxruntime", "--mode", "train"], "inference runtimes"),
    (["--runtime", "eager", "--compile"], "--compile is the older spelling"),
    (["-b", "1,x"], "argument -b/--batch-size"),
])
def test_benchmark_runtime_user_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--compare", "", "--img-size", "32"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
