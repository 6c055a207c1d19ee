"""Image classification: folder/timm/digits data with the paper's ImageNet recipe, trained on the engine's loop.

``train`` runs ``fcvit train``; ``evaluate``, ``build_eval_loader``, ``create_model`` and ``check_classes``
serve ``fcvit validate`` as well.
"""
