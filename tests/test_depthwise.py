"""CPU training shortcuts: the depth-wise weight gradient and the channel mixer's batch slices."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fcvit.models import FCViT
from fcvit.models.layers import FCViTBlock
from fcvit.ops import depthwise, mixers
from fcvit.ops.depthwise import DepthwiseConv2d, depthwise_weight_grad

from conftest import micro_kwargs


def _native_grads(x, weight, bias, padding, grad):
    groups = weight.shape[0]
    return torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]], [1, 1], list(padding), [1, 1], False, [0, 0], groups,
        [True, True, True])


@pytest.mark.parametrize("method", ["fft", "depthwise", "auto"])
@pytest.mark.parametrize("shape,kernel", [
    ((3, 8, 14, 14), 11), ((2, 16, 7, 9), 11), ((2, 8, 30, 26), 11), ((2, 8, 5, 5), 11), ((2, 4, 12, 10), 3),
    ((4, 8, 1, 1), 11), ((2, 8, 1, 6), 11),
])
def test_weight_grad_equals_the_native_backward(method, shape, kernel):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(shape[1], 1, kernel, kernel)
    padding = (kernel // 2, kernel // 2)
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    expected = _native_grads(x, weight, None, padding, grad)[1]
    got = depthwise_weight_grad(x, grad, weight, padding, method)
    assert got.shape == weight.shape
    torch.testing.assert_close(got, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)


def test_auto_picks_by_map_size():
    def pick(h, w):
        return depthwise._pick_method(torch.empty(2, 8, h, w))

    assert [pick(56, 56), pick(28, 28), pick(14, 14), pick(7, 7), pick(1, 1), pick(1, 7)] == [
        "fft", "fft", "depthwise", "depthwise", "pixel", "native"]


def test_depthwise_function_passes_gradcheck():
    """The autograd function in float64: every method against finite differences."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for method in ("fft", "depthwise"):
        assert torch.autograd.gradcheck(
            lambda a, w, b: depthwise._DepthwiseConvFunction.apply(a, w, b, (2, 2), method), (x, weight, bias))


def test_module_forward_and_backward_equal_nn_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 11, padding=5, groups=16)
    fast = DepthwiseConv2d(16, 11)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, 20, 20).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), fast(xb)
    assert yb.grad_fn is not None and "DepthwiseConv" in type(yb.grad_fn).__name__  # the fast backward ran
    torch.testing.assert_close(yb, ya, atol=0, rtol=0)  # the forward is the same op
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.bias.grad, conv.bias.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad,
                               atol=1e-5 * conv.weight.grad.abs().max().item(), rtol=0)


def test_module_uses_the_plain_op_where_the_shortcut_does_not_apply():
    fast = DepthwiseConv2d(8, 3)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        assert fast(x).grad_fn is None
    fast.weight.requires_grad_(False)
    fast.bias.requires_grad_(False)
    assert fast(x.requires_grad_()).grad_fn.name().startswith("Convolution")
    assert list(fast.state_dict()) == ["weight", "bias"]  # the keys of the nn.Conv2d it replaces
    with pytest.raises(ValueError, match="Unknown depth-wise"):
        depthwise_weight_grad(x, x, fast.weight, (1, 1), "winograd")


def test_model_gradients_do_not_depend_on_the_method(micro_reference, monkeypatch):
    model = FCViT(**micro_kwargs(micro_reference["config"]))
    model.load_state_dict(micro_reference["state_dict"])
    model.train()
    x, target = micro_reference["input"], torch.tensor([3, 7])
    grads = {}
    pick = depthwise._pick_method
    for method in ("native", "auto"):
        monkeypatch.setattr(depthwise, "_pick_method", pick if method == "auto" else lambda x: method)
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), target).backward()
        grads[method] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, ref in grads["native"].items():
        torch.testing.assert_close(grads["auto"][name], ref, atol=1e-6 + 1e-4 * ref.abs().max().item(), rtol=0,
                                   msg=name)


@pytest.fixture
def restore_slice_bytes(monkeypatch):
    def set_cpu_slice_bytes(**limits):
        for key, limit in limits.items():
            monkeypatch.setitem(mixers.CPU_SLICE_BYTES, key, limit)
    return set_cpu_slice_bytes


def test_channel_mixer_batch_slices_change_nothing(restore_slice_bytes):
    """A block whose channel mixer runs in 3 batch slices: same output and gradients as one piece."""
    torch.manual_seed(0)
    block = FCViTBlock(8, mlp_ratio=4)
    torch.nn.init.uniform_(block.layer_scale_1, 0.5, 1.0)
    torch.nn.init.uniform_(block.layer_scale_2, 0.5, 1.0)
    x = torch.randn(5, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    hidden_bytes = 5 * 32 * 6 * 6 * 4
    assert mixers.batch_slices(x, 32, 0) == 1
    assert mixers.batch_slices(x, 32, hidden_bytes // 2) == 3  # 2 would leave slices of 3 samples
    results = {}
    for limit in (0, hidden_bytes // 2):
        restore_slice_bytes(grad=limit, no_grad=limit)
        model = copy.deepcopy(block)
        xa = x.clone().requires_grad_()
        out = model(xa)
        assert out.is_contiguous(memory_format=torch.channels_last)
        out.square().sum().backward()
        with torch.inference_mode():
            inferred = model(x)
        results[limit] = (out.detach(), xa.grad, {n: p.grad for n, p in model.named_parameters()}, inferred)
    (whole, gx_whole, grads, infer_whole), (sliced, gx_sliced, sliced_grads, infer_sliced) = results.values()
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(infer_sliced, infer_whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(infer_whole, whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx_sliced, gx_whole, atol=1e-5, rtol=0)
    for name, g in sliced_grads.items():
        torch.testing.assert_close(g, grads[name], atol=1e-4, rtol=1e-5, msg=name)


def test_slices_only_on_the_cpu_and_above_one_sample():
    x = torch.randn(4, 8, 6, 6)
    sample_bytes = 32 * 6 * 6 * 4
    assert mixers.batch_slices(x, 32, 4 * sample_bytes) == 1
    assert mixers.batch_slices(x, 32, sample_bytes) == 4
    assert mixers.batch_slices(x[:1], 32, 1) == 1
    assert mixers.batch_slices(x.to("meta"), 32, 1) == 1


def test_sliced_model_still_matches_the_fixture(micro_reference, restore_slice_bytes):
    """Whole micro model with one sample per slice everywhere, on the fused and the plain path."""
    model = FCViT(**micro_kwargs(micro_reference["config"])).eval()
    model.load_state_dict(micro_reference["state_dict"])
    restore_slice_bytes(grad=1, no_grad=1)
    x = micro_reference["input"]
    assert x.shape[0] > 1
    with torch.inference_mode():
        torch.testing.assert_close(model(x), micro_reference["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(model(x), micro_reference["logits"], atol=1e-4, rtol=0)


def test_pointwise_conv_is_initialised_when_built_alone():
    """Like nn.Conv2d: kaiming-uniform weight and a uniform bias within 1/sqrt(fan_in), not torch.empty."""
    from fcvit.models.layers import PointwiseConv

    torch.manual_seed(0)
    layer = PointwiseConv(64, 32)
    bound = 1.0 / 64 ** 0.5
    for p in (layer.weight, layer.bias):
        assert torch.isfinite(p).all() and p.abs().max() <= bound + 1e-6 and p.std() > bound / 4
