"""The measures of docs/analysis.md on constructed maps whose answers are known."""
import itertools
import math

import pytest
import torch

from fcvit.analysis import measures as M
from fcvit.analysis.attention import patch_index, split_prefix
from fcvit.errors import UserError


def uniform(heads=3, n=16):
    return torch.full((heads, n, n), 1.0 / n)


def test_uniform_attention_is_query_and_head_irrelevant_with_entropy_one():
    out = M.attention_measures(uniform().unsqueeze(0))
    assert out["query_irrelevance"] == pytest.approx(1.0, abs=1e-6)
    assert out["head_irrelevance"] == pytest.approx(1.0, abs=1e-6)
    assert out["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert out["top1pct_mass"] == pytest.approx(1 / 16, abs=1e-6)  # ceil(0.16) = 1 token of 16
    assert out["top5pct_mass"] == pytest.approx(1 / 16, abs=1e-6)


def test_identical_maps_for_all_queries_give_irrelevance_one_whatever_the_map():
    torch.manual_seed(0)
    one_map = torch.rand(3, 1, 50).softmax(-1) ** 3
    one_map = one_map / one_map.sum(-1, keepdim=True)
    attn = one_map.expand(3, 20, 50)
    assert M.query_irrelevance(attn) == pytest.approx(torch.ones(3), abs=1e-6)
    assert float(M.normalized_entropy(attn).mean()) < 1.0


def test_one_hot_attention_has_sparsity_one_and_entropy_zero():
    n = 49
    attn = torch.zeros(2, n, n)
    attn[:, :, 7] = 1.0  # every query looks at token 7 only
    out = M.attention_measures(attn.unsqueeze(0))
    assert out["top1pct_mass"] == pytest.approx(1.0)
    assert out["top5pct_mass"] == pytest.approx(1.0)
    assert out["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert out["query_irrelevance"] == pytest.approx(1.0)  # one-hot on the same token for every query


def test_self_attending_queries_are_query_relevant():
    n = 64
    exact = torch.eye(n).expand(2, n, n)
    assert M.query_irrelevance(exact) == pytest.approx(torch.zeros(2), abs=1e-6)
    soft = 0.9 * torch.eye(n) + 0.1 / n  # mostly self, a little everywhere
    qi = float(M.query_irrelevance(soft.unsqueeze(0)))
    assert qi < 0.05
    assert M.query_irrelevance(uniform(1, n)) > qi + 0.9


def test_heads_looking_at_different_tokens_are_head_relevant():
    n = 10
    attn = torch.zeros(2, n, n)
    attn[0, :, 0] = 1.0
    attn[1, :, 1] = 1.0
    assert M.head_irrelevance(attn) == pytest.approx(torch.zeros(n))
    assert M.query_irrelevance(attn) == pytest.approx(torch.ones(2))


def test_mean_pairwise_cosine_equals_the_brute_force_mean_over_pairs():
    torch.manual_seed(1)
    v = torch.rand(2, 6, 9)
    fast = M.mean_pairwise_cosine(v)
    for b in range(2):
        pairs = [torch.nn.functional.cosine_similarity(v[b, i], v[b, j], dim=0)
                 for i, j in itertools.permutations(range(6), 2)]
        assert float(fast[b]) == pytest.approx(float(torch.stack(pairs).mean()), abs=1e-6)


def test_top_mass_and_entropy_on_a_known_distribution():
    p = torch.tensor([0.5, 0.25, 0.125, 0.125] + [0.0] * 96)  # 100 tokens
    assert float(M.top_mass(p, 0.01)) == pytest.approx(0.5)  # 1 token
    assert float(M.top_mass(p, 0.05)) == pytest.approx(1.0)  # 5 tokens
    entropy_bits = 0.5 * 1 + 0.25 * 2 + 2 * 0.125 * 3
    assert float(M.normalized_entropy(p)) == pytest.approx(entropy_bits * math.log(2) / math.log(100), abs=1e-6)
    with pytest.raises(ValueError):
        M.top_mass(p, 0.0)


def test_group_measures_for_identical_opposite_and_flat_maps():
    torch.manual_seed(2)
    base = torch.randn(1, 1, 6, 6)
    same = M.similarity_measures(base.expand(1, 8, 6, 6))
    assert same["group_correlation"] == pytest.approx(1.0, abs=1e-6)
    assert same["group_irrelevance"] == pytest.approx(1.0, abs=1e-6)
    opposite = torch.cat([base, -base], dim=1)
    assert M.similarity_measures(opposite)["group_correlation"] == pytest.approx(-1.0, abs=1e-6)
    flat = M.similarity_measures(torch.zeros(2, 8, 5, 7))
    assert flat["entropy"] == pytest.approx(1.0, abs=1e-6)  # softmax of a constant map is uniform
    assert flat["top1pct_mass"] == pytest.approx(1 / 35, abs=1e-6)
    peaked = torch.full((1, 8, 10, 10), -1e4)
    peaked[..., 3, 4] = 0.0
    assert M.similarity_measures(peaked)["top1pct_mass"] == pytest.approx(1.0)


def test_split_prefix_renormalises_patches_and_reports_prefix_share():
    n_prefix, n_patch = 2, 4
    attn = torch.zeros(1, n_prefix + n_patch, n_prefix + n_patch)
    attn[0, :, 0] = 0.2  # class token
    attn[0, :, 1] = 0.2  # distillation token
    attn[0, :, 2:] = 0.6 / n_patch
    attn[0, 3, 2:] = torch.tensor([0.6, 0.0, 0.0, 0.0])  # patch query 1 looks only at patch 0
    spatial, prefix = split_prefix(attn, n_prefix)
    assert spatial.shape == (1, n_patch, n_patch)
    assert prefix == pytest.approx(torch.full((1, n_patch), 0.4))
    assert spatial.sum(-1) == pytest.approx(torch.ones(1, n_patch))
    assert spatial[0, 1] == pytest.approx(torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_patch_index_maps_pixels_to_row_major_patches():
    # image 400 wide, 200 high, a 2 x 4 grid: each patch covers 100 x 100 pixels
    assert patch_index(0, 0, (400, 200), (2, 4)) == 0
    assert patch_index(399, 199, (400, 200), (2, 4)) == 7
    assert patch_index(150, 120, (400, 200), (2, 4)) == 5
    with pytest.raises(UserError, match="outside"):
        patch_index(400, 10, (400, 200), (2, 4))
