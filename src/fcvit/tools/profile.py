"""Model size and cost: parameters, multiply-accumulates, and the activations training keeps for backward."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch
from torch import nn

__all__ = ["count_params", "count_gmacs", "SavedTensor", "saved_activations", "saved_activation_bytes"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _counted_weight(module: nn.Module) -> Optional[torch.Tensor]:
    """The weight of a convolution (4-D, any groups) or a linear layer (2-D), the layers MACs are counted of."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and (weight.dim() == 4 or weight.dim() == 2 and isinstance(module, nn.Linear)):
        return weight
    return None


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Every output element reads ``weight.numel() / out_channels`` inputs (``in / groups * kh * kw``)."""
    weight = _counted_weight(module)
    if weight is None or not isinstance(output, torch.Tensor):
        return 0
    return output.numel() * weight.numel() // weight.shape[0]


def _block_macs(block: nn.Module, height: int, width: int) -> int:
    """MACs of one FCViT block from its layers' shapes (its fused fast paths bypass layer hooks): its
    convolutions are stride 1, "same" padding; its global-context linears act on one pooled vector."""
    weights = [w for w in map(_counted_weight, block.modules()) if w is not None]
    return sum((height * width if w.dim() == 4 else 1) * w.numel() for w in weights)


@torch.no_grad()
def count_gmacs(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224)) -> float:
    """GMACs of one forward pass on one image, counting convolution and linear layers from their shapes
    rather than the operators that run: the architecture's figure (as the papers' tables give it)."""
    from ..models.layers import FCViTBlock

    totals: List[int] = []
    inside_blocks = {id(sub) for m in model.modules() if isinstance(m, FCViTBlock) for sub in m.modules()}
    handles = []
    for m in model.modules():
        if isinstance(m, FCViTBlock):
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp: totals.append(inp[0].shape[0] * _block_macs(mod, inp[0].shape[-2], inp[0].shape[-1]))))
        elif id(m) not in inside_blocks and not list(m.children()):
            handles.append(m.register_forward_hook(lambda mod, _inp, out: totals.append(_layer_macs(mod, out))))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(totals) / 1e9


@dataclass(frozen=True)
class SavedTensor:
    """One tensor autograd kept for backward: the module that saved it, its shape, dtype and bytes."""

    module: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    nbytes: int


def saved_activations(model: nn.Module, x: torch.Tensor, depth: int = 5) -> List[SavedTensor]:
    """Every activation the forward pass of ``model(x)`` keeps for backward, in the order saved: what
    training memory is made of (docs/benchmarks.md). Once per storage (the first module saving it), no
    parameters; ``module`` is the innermost running module's name cut to ``depth`` components ("" outside any)."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Set[int] = set()
    records: List[SavedTensor] = []
    stack: List[str] = [""]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and key not in param_storages and storage.nbytes() > 0:
            seen.add(key)
            records.append(SavedTensor(stack[-1], tuple(t.shape), t.dtype, storage.nbytes()))
        return t

    def enter(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object) -> None:
            stack.append(name)
        return hook

    def leave(_module: nn.Module, _inputs: object, _output: object) -> None:
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(".".join(name.split(".")[:depth]))))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        del out
    finally:
        for h in handles:
            h.remove()
    return records


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, depth: int = 5) -> Dict[str, int]:
    """Bytes :func:`saved_activations` finds, summed per module name."""
    totals: Dict[str, int] = {}
    for record in saved_activations(model, x, depth):
        totals[record.module] = totals.get(record.module, 0) + record.nbytes
    return totals
