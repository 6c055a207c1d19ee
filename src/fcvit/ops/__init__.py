"""FCViT's fast paths: custom operators that compute :mod:`fcvit.models.layers`' math cheaper.

One switch turns them all off (:mod:`fcvit.ops.config`). The modules call the operators with their own
parameters, so only a change of a module's math needs its operator changed with it. Export-only choices
live in :mod:`fcvit.ops.onnx_forms`.
"""
from .config import recording, set_fused_ops, use_fused_ops
from .depthwise import DepthwiseConv2d, depthwise_weight_grad
from .mixers import add_global_context, channel_mixer, conv_mlp

__all__ = ["use_fused_ops", "set_fused_ops", "recording", "add_global_context", "conv_mlp", "channel_mixer",
           "DepthwiseConv2d", "depthwise_weight_grad"]
