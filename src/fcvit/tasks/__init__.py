"""Dense-prediction tasks built on FCViT backbones: ``detection`` (Mask R-CNN) and ``segmentation``.

Each task package holds its dataset, model builder, training and evaluation functions; the command
line front-ends live in ``fcvit.cli`` and the shared training machinery in ``fcvit.engine``.
"""
