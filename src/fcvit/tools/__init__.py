"""Tools around the models: benchmarking against timm peers, export, and parameter/MAC counts.

They use the models and never the other way round; the ``fcvit benchmark``, ``fcvit export`` and
``fcvit models`` commands are their command lines.
"""
