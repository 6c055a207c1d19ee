"""The tasks, side by side: ``classification`` (ImageNet recipe), ``detection`` (Mask R-CNN) and
``segmentation`` (Semantic FPN).

Each task package holds its data, model builder, loss and evaluation and gives them to the engine's one
training loop (:mod:`fcvit.engine.loop`); the command-line front-ends live in ``fcvit.cli``.
"""
