"""Folding FCViT for inference: fewer operations, the same outputs.

``fcvit.fuse(model)`` returns an eval-mode copy in which every BatchNorm (stem, downsamplers) is folded into
the convolution before it, every block's second layer scale into its channel mixer's last 1x1, and the
affine of its second GroupNorm into the mixer's first 1x1. The first layer scale and norm stay (the token
mixer ends in a GELU, and the global context is not linear in its input), as does the final norm. A fused
model has other state-dict keys: it is for inference and export, not for training or saving.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import ConvEmbed, FCViTBlock

__all__ = ["fuse", "fold_batch_norm"]


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the convolution that feeds it (in place)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    new_bias = (bias - bn.running_mean) * scale + bn.bias
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


@torch.no_grad()
def _fold_block(block: FCViTBlock) -> None:
    mixer = block.channel_mixer
    # layer scale 2 into the channel mixer's last 1x1 conv; the block multiplies by ones afterwards
    scale = block.layer_scale_2
    mixer.fc2.weight.mul_(scale.reshape(-1, 1, 1, 1))
    mixer.fc2.bias.mul_(scale)
    scale.fill_(1.0)
    # norm2's affine into the first 1x1 conv: W (w * x + b) + c = (W * w) x + (W b + c)
    norm = block.norm2
    if isinstance(norm, nn.GroupNorm) and norm.affine:
        w1 = mixer.fc1.weight.flatten(1)
        mixer.fc1.bias.add_(w1 @ norm.bias)
        mixer.fc1.weight.mul_(norm.weight.reshape(1, -1, 1, 1))
        block.norm2 = nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=False)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An inference copy of an FCViT classifier or backbone with the exact folds described above.

    Outputs stay equal to the unfused model's in eval mode (to float rounding). ``inplace=True``
    folds ``model`` itself instead of a copy.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvEmbed) and isinstance(module.norm, nn.BatchNorm2d):
            fold_batch_norm(module.proj, module.norm)
            module.norm = nn.Identity()
        elif isinstance(module, FCViTBlock):
            _fold_block(module)
    return model
