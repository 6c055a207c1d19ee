"""FCViT written the way the original code base writes it: the "before" of docs/benchmarks.md.

A re-implementation from docs/fcvit-architecture.md in the original's style (a PoolFormer fork):
NCHW tensors, every 1x1 projection an ``nn.Conv2d``, GroupNorm(1, C), and the GlobalContext
arithmetic as broadcast products on 5-D views. It loads the same state dicts as ``fcvit`` and gives
the same outputs (checked against the fixtures by tests/test_performance.py), so the two can be timed
against each other fairly. It is not part of the package: nothing in ``src/`` imports it.

``create_original("fcvit_tiny")`` builds one; ``channels_last=True`` on :class:`OriginalFCViT` converts
the input (the "channels-last original" of the issue; convert the weights with
``model.to(memory_format=torch.channels_last)``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath

__all__ = ["OriginalFCViT", "create_original", "ORIGINAL_CONFIGS"]

ORIGINAL_CONFIGS = {
    "fcvit_tiny": dict(layers=(3, 3, 5, 2), embed_dims=(32, 64, 160, 320)),
    "fcvit_b12": dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 320, 512)),
    "fcvit_b24": dict(layers=(4, 4, 12, 4), embed_dims=(64, 128, 320, 512)),
    "fcvit_b48": dict(layers=(8, 8, 24, 8), embed_dims=(64, 128, 320, 512)),
}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, stride, padding, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x):
        return self.norm(self.proj(x))


class GroupNorm(nn.GroupNorm):
    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)


class GlobalContext(nn.Module):
    """The original's arithmetic: NCHW, 5-D broadcast products, the similarity materialised per channel."""

    def __init__(self, dim, groups=8):
        super().__init__()
        self.groups = groups
        self.scale = (dim // groups) ** -0.5
        self.rescale_weight = nn.Parameter(torch.ones(groups))
        self.rescale_bias = nn.Parameter(torch.zeros(groups))
        self.fc1 = nn.Linear(dim, 2 * (dim // 8))
        self.fc2 = nn.Linear(dim // 8, dim)
        self.similarity = nn.Identity()

    def forward(self, x):
        B, C, H, W = x.shape
        gc = x.mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)  # B, C, 1, 1
        sim = x.reshape(B, self.groups, C // self.groups, H, W) * gc.reshape(B, self.groups, C // self.groups, 1, 1)
        sim = sim.sum(dim=2, keepdim=True) * self.scale  # B, G, 1, H, W
        mean = sim.reshape(B, -1).mean(dim=-1).reshape(B, 1, 1, 1, 1)
        std = sim.reshape(B, -1).std(dim=-1).reshape(B, 1, 1, 1, 1)
        sim = (sim - mean) / (std + 1e-5)
        sim = sim * self.rescale_weight.reshape(1, -1, 1, 1, 1) + self.rescale_bias.reshape(1, -1, 1, 1, 1)
        sim = self.similarity(sim.squeeze(2)).unsqueeze(2)
        gc = self.fc1(gc.reshape(B, C)).reshape(B, 2, -1).max(dim=1)[0]
        gc = self.fc2(gc).reshape(B, self.groups, C // self.groups, 1, 1)
        return (sim * gc).reshape(B, C, H, W)


class TokenMixer(nn.Module):
    def __init__(self, dim, act_layer=nn.GELU):
        super().__init__()
        hidden = max(dim // 8, 16)
        self.gc1 = GlobalContext(dim)
        self.dw1 = nn.Conv2d(dim, dim, 11, padding=5, groups=dim)
        self.fc1 = nn.Sequential(nn.Conv2d(dim, hidden, 1), act_layer(), nn.Conv2d(hidden, dim, 1))
        self.gc2 = GlobalContext(dim)
        self.dw2 = nn.Conv2d(dim, dim, 11, padding=5, groups=dim)
        self.fc2 = nn.Sequential(nn.Conv2d(dim, hidden, 1), act_layer(), nn.Conv2d(hidden, dim, 1))
        self.act = act_layer()

    def forward(self, x):
        x = x + self.gc1(x)
        x = self.act(self.fc1(self.dw1(x)))
        x = x + self.gc2(x)
        x = self.act(self.fc2(self.dw2(x)))
        return x


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_features, in_features, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.act(self.dwconv(self.fc1(x)))
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


class Block(nn.Module):
    def __init__(self, dim, mlp_ratio, drop_path=0.0, layer_scale_init_value=1e-5):
        super().__init__()
        self.norm1 = GroupNorm(dim)
        self.token_mixer = TokenMixer(dim)
        self.norm2 = GroupNorm(dim)
        self.channel_mixer = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x):
        x = x + self.drop_path(self.layer_scale_1.unsqueeze(-1).unsqueeze(-1) * self.token_mixer(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2.unsqueeze(-1).unsqueeze(-1) * self.channel_mixer(self.norm2(x)))
        return x


class OriginalFCViT(nn.Module):
    def __init__(self, layers: Sequence[int], embed_dims: Sequence[int], mlp_ratios=(8, 8, 4, 4),
                 num_classes=1000, drop_path_rate=0.0, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        self.patch_embed = PatchEmbed(7, 4, 3, 3, embed_dims[0])
        total = sum(layers)
        network = []
        for i, depth in enumerate(layers):
            blocks = [Block(embed_dims[i], mlp_ratios[i],
                            drop_path=drop_path_rate * (sum(layers[:i]) + j) / max(total - 1, 1))
                      for j in range(depth)]
            network.append(nn.Sequential(*blocks))
            if i < len(layers) - 1:
                network.append(PatchEmbed(3, 2, 1, embed_dims[i], embed_dims[i + 1]))
        self.network = nn.ModuleList(network)
        self.norm = GroupNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        for layer in self.network:
            x = layer(x)
        x = self.norm(x)
        return self.head(x.mean([-2, -1]))


def create_original(name: str, **kwargs) -> OriginalFCViT:
    return OriginalFCViT(**ORIGINAL_CONFIGS[name], **kwargs)
