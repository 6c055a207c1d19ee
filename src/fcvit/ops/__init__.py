"""FCViT's fast paths: custom operators that compute :mod:`fcvit.models.layers`' math cheaper.

One switch turns them all off (:mod:`fcvit.ops.config`). The modules call the operators with their own
parameters (``TokenMixer.fused_forward`` and the like, in ``layers.py``), so a change of a module's
structure is made in ``layers.py`` alone; only a change of its math needs its operator here changed
with it. tests/test_memory.py and tests/test_performance.py compare the two paths' outputs and gradients.
How the plain layers are written into an ONNX graph, the one place for export-only choices, is
:mod:`fcvit.ops.onnx_forms`.
"""
from .config import recording, set_fused_ops, use_fused_ops
from .depthwise import DepthwiseConv2d, depthwise_weight_grad
from .mixers import add_global_context, channel_mixer, conv_mlp

__all__ = ["use_fused_ops", "set_fused_ops", "recording", "add_global_context", "conv_mlp", "channel_mixer",
           "DepthwiseConv2d", "depthwise_weight_grad"]
