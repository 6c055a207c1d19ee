"""Tools around the models (never the other way round): benchmarking against timm peers, export, and
parameter/MAC counts; ``fcvit benchmark``, ``fcvit export`` and ``fcvit models`` are their command lines."""
