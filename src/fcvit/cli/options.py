"""Command-line options that the dense-prediction commands (detect, segment) share."""
from __future__ import annotations

import argparse


def add_runtime_options(p: argparse.ArgumentParser, training: bool) -> None:
    """Precision, data workers and device; for training also resume, seed and TensorBoard."""
    if training:
        p.add_argument("--resume", default=None, metavar="CKPT|auto",
                       help="continue from a checkpoint; 'auto' = OUTPUT/last.pth.tar if it exists")
        p.add_argument("--amp", action="store_true", help="mixed precision (bf16 where supported, else fp16)")
    else:
        p.add_argument("--amp", action="store_true", help="mixed precision inference")
    p.add_argument("--amp-dtype", default="auto", help="auto, bfloat16 or float16 (default auto)")
    p.add_argument("--workers", type=int, default=4,
                   help=f"data loading processes{' per GPU' if training else ''} (default 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    if training:
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs to OUTPUT/tensorboard")
