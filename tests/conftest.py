"""Shared test helpers: the reference fixtures of the original FCViT implementation.

The micro fixtures ship with the tests; the larger fcvit_tiny ones are read from ../shared/fixtures
(beside the clone in CI) and their tests are skipped, saying why, when that folder is absent.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from fcvit.ops import set_fused_ops

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
MICRO_FIXTURES = TESTS_DIR / "fixtures"
SHARED_FIXTURES = REPO_DIR.parent / "shared" / "fixtures"

torch.set_num_threads(min(2, torch.get_num_threads()))


def load_fixture(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def shared_fixture(name: str) -> dict:
    path = SHARED_FIXTURES / name
    if not path.exists():
        pytest.skip(f"{path} not found: the large reference fixtures live in ../shared/fixtures beside the clone")
    return load_fixture(path)


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a shared 2-core machine: one intra-op thread is faster and fair to parallel runs.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def micro_reference() -> dict:
    return load_fixture(MICRO_FIXTURES / "fcvit_micro_reference.pt")


@pytest.fixture(scope="session")
def micro_features_reference() -> dict:
    return load_fixture(MICRO_FIXTURES / "fcvit_micro_features_reference.pt")


def micro_kwargs(config: dict) -> dict:
    """FCViT constructor arguments for a fixture's ``config``."""
    kwargs = dict(depths=config["layers"], dims=config["embed_dims"], mlp_ratios=config["mlp_ratios"])
    if "num_classes" in config:
        kwargs["num_classes"] = config["num_classes"]
    return kwargs


@contextlib.contextmanager
def fused_ops(enabled: bool, *models: nn.Module) -> Iterator[None]:
    """fcvit.ops' switch set for the modules built inside, and ``models``' FCViT modules (which read it
    when they were built) switched the same way meanwhile; switching on keeps what a module decided."""
    previous = set_fused_ops(enabled)
    built = [(m, m.fused_ops) for model in models for m in model.modules() if hasattr(m, "fused_ops")]
    for m, decided in built:
        m.fused_ops = decided and enabled
    try:
        yield
    finally:
        set_fused_ops(previous)
        for m, decided in built:
            m.fused_ops = decided
