"""The fast paths' training memory: less kept for backward, the same gradients, under autocast and compile too."""
from __future__ import annotations

import copy
from typing import Dict, Tuple

import pytest
import torch
from torch import nn

from fcvit.models import FCViT
from fcvit.models.layers import FCViTBlock
from fcvit.ops import mixers
from fcvit.tools.profile import saved_activation_bytes

from conftest import fused_ops, micro_kwargs


def _model(micro_reference: dict) -> FCViT:
    """The fixture's micro model with non-trivial layer scales, so every mixer reaches the output."""
    model = FCViT(**micro_kwargs(micro_reference["config"]))
    model.load_state_dict(micro_reference["state_dict"])
    for block in model.modules():
        if isinstance(block, FCViTBlock):
            nn.init.uniform_(block.layer_scale_1, 0.5, 1.0)
            nn.init.uniform_(block.layer_scale_2, 0.5, 1.0)
    return model.train()


def _step(model: nn.Module, x: torch.Tensor, fast: bool) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Output and parameter gradients of one cross-entropy step, with the fast paths on or off."""
    with fused_ops(fast, model):
        model.zero_grad(set_to_none=True)
        out = model(x)
        nn.functional.cross_entropy(out.float(), torch.arange(x.shape[0]) % out.shape[1]).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_grads_close(got: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], rel: float) -> None:
    scale = max(g.abs().max().item() for g in ref.values())
    for name, g in ref.items():
        # relative to the largest gradient: biases in front of a BatchNorm have gradients of rounding size
        torch.testing.assert_close(got[name], g, atol=rel * scale, rtol=rel, msg=name)


def test_fast_path_gradients_equal_the_plain_ops(micro_reference):
    model = _model(micro_reference)
    x = micro_reference["input"]
    out_plain, plain = _step(model, x, fast=False)
    out_fast, fast = _step(model, x, fast=True)
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=0)
    _assert_grads_close(fast, plain, 1e-4)


def test_fast_path_keeps_less_for_backward():
    """A block shaped like fcvit_tiny's second stage (64 channels, 8x-wide channel mixer): under a third.

    The channel mixer keeps nothing as wide as its hidden layer (0.22x of the plain ops in total; it
    was 0.5x while the mixer kept the first 1x1's output)."""
    block = FCViTBlock(64, mlp_ratio=8).train()
    x = torch.randn(2, 64, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    with fused_ops(False, block):
        plain = sum(saved_activation_bytes(block, x).values())
    fast = sum(saved_activation_bytes(block, x).values())
    assert fast < 0.3 * plain, (fast, plain)


def test_saved_activation_bytes_counts_each_storage_once_per_module():
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    saved = saved_activation_bytes(model, torch.randn(3, 8, requires_grad=True))
    # the first linear keeps its input (3x8), the GELU its input (3x16), the second linear the GELU's output
    assert saved == {"0": 3 * 8 * 4, "1": 3 * 16 * 4, "2": 3 * 16 * 4}


def test_bf16_autocast_takes_the_same_savings(micro_reference):
    model = _model(micro_reference)
    x = micro_reference["input"]
    results = {}
    for fast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results[fast] = _step(model, x, fast)
            with fused_ops(fast):
                saved = sum(saved_activation_bytes(FCViTBlock(64, mlp_ratio=8).train(), torch.randn(
                    2, 64, 14, 14).contiguous(memory_format=torch.channels_last)).values())
        results[fast] += (saved,)
    (out_plain, plain, saved_plain), (out_fast, fast, saved_fast) = results[False], results[True]
    assert out_fast.dtype == out_plain.dtype == torch.bfloat16
    torch.testing.assert_close(out_fast.float(), out_plain.float(), atol=3e-2, rtol=3e-2)
    _assert_grads_close(fast, plain, 5e-2)
    assert saved_fast < 0.6 * saved_plain, (saved_fast, saved_plain)


def test_operators_pass_opcheck():
    """Fake (shape) implementations, schemas and autograd registrations agree with the real kernels."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    mlp = (torch.randn(8, 1, 3, 3), torch.randn(8), torch.randn(2, 8), torch.randn(2), torch.randn(8, 2),
           torch.randn(8))
    mixer = (torch.rand(8) + 0.5, torch.randn(8), 1, 1e-5, torch.randn(32, 8), torch.randn(32),
             torch.randn(32, 1, 3, 3), torch.randn(32), torch.randn(8, 32), torch.randn(8))
    mlp = tuple(t.requires_grad_() for t in mlp)
    mixer = tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in mixer)
    torch.library.opcheck(torch.ops.fcvit.conv_mlp, (x, *mlp))
    torch.library.opcheck(torch.ops.fcvit.channel_mixer, (x, *mixer))
    with torch.no_grad():
        torch.library.opcheck(torch.ops.fcvit.conv_mlp_infer, (x.detach(), *(t.detach() for t in mlp)))
        torch.library.opcheck(torch.ops.fcvit.channel_mixer_infer,
                              (x.detach(), *(t.detach() if isinstance(t, torch.Tensor) else t for t in mixer)))


def test_operators_gradcheck_in_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    norm = (torch.rand(8, dtype=torch.float64) + 0.5, torch.randn(8, dtype=torch.float64))
    weights = [torch.randn(s, dtype=torch.float64) * 0.3 for s in ((16, 8), (16,), (16, 1, 3, 3), (16,), (8, 16), (8,))]
    args = [t.requires_grad_() for t in (x, *norm, *weights)]

    def mixer(x, nw, nb, w1, b1, wdw, bdw, w2, b2):
        return torch.ops.fcvit.channel_mixer(x, nw, nb, 1, 1e-5, w1, b1, wdw, bdw, w2, b2)[0]

    def mlp(x, wdw, bdw, w0, b0, w1, b1):
        return torch.ops.fcvit.conv_mlp(x, wdw, bdw, w0, b0, w1, b1)[0]

    assert torch.autograd.gradcheck(mixer, args)
    mlp_args = [x, *(t.requires_grad_() for t in (
        torch.randn(8, 1, 5, 5, dtype=torch.float64) * 0.3, norm[1].detach().clone(), weights[0][:4].detach().clone(),
        weights[1][:4].detach().clone(), weights[0][:4].detach().t().contiguous(), norm[1].detach().clone()))]
    assert torch.autograd.gradcheck(mlp, mlp_args)


def test_dropout_in_training_takes_the_plain_path():
    block = FCViTBlock(16, proj_drop=0.1).train()
    x = torch.randn(2, 16, 6, 6)
    assert not block.fuses(x)
    assert block.eval().fuses(x)
    with fused_ops(False):
        block = FCViTBlock(16, proj_drop=0.1).eval()
        assert not block.fuses(x)


def test_compiled_training_calls_the_operators_without_graph_breaks(micro_reference):
    """``fullgraph=True`` compiles the block's operators as calls, and the compiled step equals eager."""
    model = _model(micro_reference)
    x = micro_reference["input"]
    out_eager, eager = _step(model, x, fast=True)
    targets = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: g, bw_compiler=lambda g, _: g)(gm, example_inputs)

    torch._dynamo.reset()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=recording_backend)
    out_compiled, grads = _step(compiled, x, fast=True)
    assert any("fcvit.channel_mixer" in t for t in targets)
    assert any("fcvit.conv_mlp" in t for t in targets)
    torch.testing.assert_close(out_compiled, out_eager, atol=1e-5, rtol=0)
    _assert_grads_close({k.removeprefix("_orig_mod."): v for k, v in grads.items()}, eager, 1e-4)
    torch._dynamo.reset()


@pytest.mark.parametrize("fast", [True, False])
def test_inference_with_fast_paths_on_and_off_match_the_fixture(micro_reference, fast):
    model = _model(micro_reference)
    model.load_state_dict(micro_reference["state_dict"])
    model.eval()
    with fused_ops(fast, model):
        with torch.inference_mode():
            torch.testing.assert_close(model(micro_reference["input"]), micro_reference["logits"], atol=1e-4, rtol=0)


def test_drop_path_in_training_gives_the_plain_result():
    """With drop-path active the first residual stays outside the operator; same draws, same result."""
    block = FCViTBlock(16, mlp_ratio=4, drop_path=0.5).train()
    nn.init.uniform_(block.layer_scale_1, 0.5, 1.0)
    nn.init.uniform_(block.layer_scale_2, 0.5, 1.0)
    x = torch.randn(4, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    results = []
    for fast in (True, False):
        with fused_ops(fast, block):
            torch.manual_seed(3)
            xa = x.clone().requires_grad_()
            out = block(xa)
            out.square().sum().backward()
            results.append((out.detach(), xa.grad))
    (out_fast, grad_fast), (out_plain, grad_plain) = results
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_fast, grad_plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("keep_from", [0, 10 ** 9])
def test_kept_or_recomputed_mixer_hidden_gives_the_plain_gradients(micro_reference, keep_from, monkeypatch):
    """The channel mixer keeps its hidden layer (``0``) or recomputes it (huge): same as the plain ops."""
    model = _model(micro_reference)
    x = micro_reference["input"]
    monkeypatch.setattr(mixers, "KEEP_HIDDEN_FROM_CHANNELS", keep_from)
    out_plain, plain = _step(model, x, fast=False)
    out_fast, fast = _step(model, x, fast=True)
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=0)
    _assert_grads_close(fast, plain, 1e-4)


def test_mixer_keeps_its_hidden_layer_only_from_the_channel_threshold():
    """Narrow (early-stage) mixers recompute the wide hidden layer; wide ones keep it for backward."""
    saved_widths = {}
    for dim in (64, 128):
        block = FCViTBlock(dim, mlp_ratio=4).train()
        x = torch.randn(2, dim, 28, 28).contiguous(memory_format=torch.channels_last).requires_grad_()
        block_tensor_bytes = x.numel() * x.element_size()
        saved_widths[dim] = sum(saved_activation_bytes(block, x).values()) / block_tensor_bytes
    assert not mixers.keep_mixer_hidden(64) and mixers.keep_mixer_hidden(128)
    # in block widths, the 128-channel block keeps its 4x-wide hidden layer on top of what the 64 keeps
    # (the rest differs by the narrow token-mixer hidden and the weight-sized tensors, under half a width)
    assert saved_widths[128] - saved_widths[64] == pytest.approx(4.0, abs=0.5), saved_widths


def test_sliced_token_mixer_backward_equals_one_piece(monkeypatch):
    """The token-mixer backward over cache-sized slices accumulates the same weight gradients."""
    torch.manual_seed(0)
    x = torch.randn(5, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    weights = [torch.randn(16, 1, 5, 5) * 0.2, torch.randn(16) * 0.1, torch.randn(16, 16) * 0.3, torch.randn(16) * 0.1,
               torch.randn(16, 16) * 0.3, torch.randn(16) * 0.1]
    residual, scale = torch.randn_like(x), torch.rand(16) + 0.5
    results = []
    for limit in (0, 1):  # one piece; one sample per slice
        monkeypatch.setitem(mixers.CPU_SLICE_BYTES, "mlp", limit)
        leaves = [t.clone().requires_grad_() for t in (x, *weights, residual, scale)]
        out = torch.ops.fcvit.conv_mlp(*leaves)[0]
        out.square().sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5 * max(1.0, want.abs().max().item()), rtol=1e-5)


def test_operator_with_kept_hidden_passes_opcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    mixer = (torch.rand(8) + 0.5, torch.randn(8), 1, 1e-5, torch.randn(32, 8), torch.randn(32),
             torch.randn(32, 1, 3, 3), torch.randn(32), torch.randn(8, 32), torch.randn(8), True)
    mixer = tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in mixer)
    torch.library.opcheck(torch.ops.fcvit.channel_mixer, (x, *mixer))


def test_switch_off_runs_the_plain_math_in_every_module(micro_reference, monkeypatch):
    """Built with the switch off, no FCViT module calls a fused operator, the depth-wise weight gradient
    included (training and inference); built with it on, every one of them is called."""
    from fcvit import ops
    from fcvit.ops import depthwise

    calls = []

    def spy(name, fn):
        return lambda *args, **kwargs: calls.append(name) or fn(*args, **kwargs)

    for name in ("add_global_context", "conv_mlp", "channel_mixer"):
        monkeypatch.setattr(ops, name, spy(name, getattr(ops, name)))
    monkeypatch.setattr(depthwise, "depthwise_weight_grad", spy("weight_grad", depthwise.depthwise_weight_grad))
    function = depthwise._DepthwiseConvFunction
    monkeypatch.setattr(function, "apply", spy("dw_function", function.apply))
    x = micro_reference["input"]
    for fast in (False, True):
        calls.clear()
        with fused_ops(fast):
            model = _model(micro_reference)
            conv = depthwise.DepthwiseConv2d(8, 3)
        kinds = {type(m).__name__ for m in model.modules() if getattr(m, "fused_ops", None) is fast}
        assert kinds == {"FCViTBlock", "GlobalContext", "DepthwiseConv2d"}
        _step(model, x, fast)
        conv(torch.randn(2, 8, 6, 6)).sum().backward()
        with torch.no_grad():
            model.eval()(x)
        expected = {"add_global_context", "conv_mlp", "channel_mixer", "weight_grad", "dw_function"}
        assert set(calls) == (expected if fast else set()), calls
