"""timm's own FX model tests (tests/test_models.py of pytorch-image-models), reproduced for FCViT.

timm checks that a model traced with its FX tracer gives *exactly* the eager outputs in inference
mode, that the traced graph scripts with TorchScript, and that it trains (every parameter gets a
gradient). FCViT's eager CPU inference takes fused oneDNN kernels and runs the channel mixer in batch
slices, so these tests also check that the fast paths are really taken where the traced graph must
match them. Input sizes are timm's (TARGET_FWD_FX_SIZE, TARGET_BWD_FX_SIZE, TARGET_JIT_SIZE = 128).
"""
from typing import Dict, Iterator, List

import pytest
import torch
import timm
from timm.layers import set_layer_config
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names, NodePathTracer

import fcvit  # noqa: F401  (registers the models)
from fcvit.models import MODEL_CONFIGS
from fcvit.models.layers import FCViTBlock
from fcvit.ops import mixers

from conftest import fused_ops

VARIANTS = ["fcvit_tiny", "fcvit_b12", "fcvit_b24", "fcvit_b48"]
FX_SIZE = 128  # timm's TARGET_FWD_FX_SIZE / TARGET_BWD_FX_SIZE / TARGET_JIT_SIZE


def _tracer_kwargs() -> Dict[str, object]:
    """What timm's test passes to torchvision's tracer: timm's registered leaf modules and functions."""
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                param_shapes_constant=True)


def _create_fx_model(model: torch.nn.Module, train: bool = False) -> torch.fx.GraphModule:
    """A feature extractor returning the traced model's outputs, as timm's ``_create_fx_model`` builds it."""
    kwargs = _tracer_kwargs()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    train_return = [train_nodes[-1]]
    if train:  # the nodes that feed the output node of the train-mode graph
        graph = NodePathTracer(**kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        names = [n.name for n in graph_nodes]
        outputs = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        train_return = [train_nodes[-names.index(name)] for name in outputs]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=kwargs)


def _outputs(fx_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat(tuple(fx_model(x).values()))


def _blocks_called(fx_model: torch.fx.GraphModule) -> List[str]:
    return [n.target for n in fx_model.graph.nodes
            if n.op == "call_module" and isinstance(fx_model.get_submodule(n.target), FCViTBlock)]


@pytest.fixture(scope="module")
def eval_models() -> Iterator[Dict[str, torch.nn.Module]]:
    cache: Dict[str, torch.nn.Module] = {}
    yield cache
    cache.clear()


def _eval_model(cache: Dict[str, torch.nn.Module], name: str) -> torch.nn.Module:
    if name not in cache:
        torch.manual_seed(0)
        cache[name] = timm.create_model(name).eval()
    return cache[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_fx_forward_is_bit_identical_in_inference_mode(name, eval_models):
    """timm's test_model_forward_fx: ``torch.equal`` between eager and traced outputs."""
    model = _eval_model(eval_models, name)
    x = torch.randn(1, 3, FX_SIZE, FX_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        eager = model(x)
        fx_model = _create_fx_model(model)
        traced = _outputs(fx_model, x)
    assert torch.equal(traced, eager)
    assert eager.shape == (1, 1000) and not torch.isnan(eager).any()
    # every block is one call in the graph, so it takes its own (fused) path there too
    assert len(_blocks_called(fx_model)) == sum(MODEL_CONFIGS[name].depths)


def test_fx_forward_matches_the_fused_sliced_path(monkeypatch):
    """The exact match must hold where the fast paths differ from the plain ops: fused kernels, batch slices."""
    torch.manual_seed(0)
    model = timm.create_model("fcvit_tiny").eval()
    for block in model.modules():  # non-trivial layer scales, so the mixers' rounding reaches the output
        if isinstance(block, FCViTBlock):
            torch.nn.init.uniform_(block.layer_scale_1, 0.5, 1.0)
            torch.nn.init.uniform_(block.layer_scale_2, 0.5, 1.0)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    monkeypatch.setitem(mixers.CPU_SLICE_BYTES, "no_grad", 64 * 1024)  # slices of one or two samples in every stage
    with torch.inference_mode():
        fx_model = _create_fx_model(model)
        fused = model(x)
        traced = _outputs(fx_model, x)
        with fused_ops(False, model):
            plain = model(x)
    assert torch.equal(traced, fused)
    if mixers.HAS_ONEDNN:  # oneDNN present: the paths really differ in rounding
        assert not torch.equal(fused, plain)
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_fx_traced_graph_scripts(name):
    """timm's test_model_forward_fx_torchscript: trace, then ``torch.jit.script`` the graph, and run it."""
    torch.manual_seed(0)
    with set_layer_config(scriptable=True):
        model = timm.create_model(name).eval()
    x = torch.randn(1, 3, FX_SIZE, FX_SIZE, generator=torch.Generator().manual_seed(3))
    scripted = torch.jit.script(_create_fx_model(model))
    with torch.inference_mode():
        out = _outputs(scripted, x)
        eager = model(x)
    assert out.shape == (1, 1000) and not torch.isnan(out).any()
    torch.testing.assert_close(out, eager, atol=1e-4, rtol=0)  # TorchScript runs the plain ops


def _fx_backward(name: str, size: int) -> None:
    """timm's test_model_backward_fx: a train-mode traced model gives every parameter a gradient."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _create_fx_model(model, train=True)
    out = _outputs(fx_model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4)))
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:3]}"
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert out.shape == (2, 42) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", ["fcvit_tiny", "fcvit_b12"])
def test_fx_backward(name):
    _fx_backward(name, FX_SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcvit_b24", "fcvit_b48"])
def test_fx_backward_deep_variants(name):
    _fx_backward(name, FX_SIZE)


def test_fx_features_match_the_getter_features():
    """``features_only`` through timm's FX extractor gives the forward_intermediates maps exactly."""
    torch.manual_seed(0)
    getter = timm.create_model("fcvit_tiny", features_only=True).eval()
    torch.manual_seed(0)  # the same initial weights (the two wrappers name them differently)
    fx_features = timm.create_model("fcvit_tiny", features_only=True, feature_cls="fx").eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = getter(x)
        got = fx_features(x)
    assert [t.shape[1] for t in got] == [32, 64, 160, 320]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
