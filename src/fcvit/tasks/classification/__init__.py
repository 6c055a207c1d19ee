"""Image classification: folder/timm/digits data with the paper's ImageNet recipe, trained on the engine's loop
(``fcvit train``); its evaluation, eval loader, model and class checks serve ``fcvit validate`` as well."""
