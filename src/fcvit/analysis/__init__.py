"""Seeing what the models see: FCViT's group similarity maps, ViT attention maps, and measures of both (defined in
docs/analysis.md)."""
from .attention import ViTAttention, fcvit_similarity, is_vit, patch_index, split_prefix
from .loading import create_analysis_model, hub_reachable, image_to_tensor, input_size_of, is_fcvit, model_name
from .measures import (ATTENTION_MEASURES, SIMILARITY_MEASURES, attention_measures, head_irrelevance,
                       mean_pairwise_correlation, mean_pairwise_cosine, normalized_entropy, query_irrelevance,
                       similarity_measures, top_mass)
from .pipeline import analyze_attention, analyze_similarity, query_attention

__all__ = ["ViTAttention", "fcvit_similarity", "is_vit", "patch_index", "split_prefix", "create_analysis_model",
           "model_name", "hub_reachable", "image_to_tensor", "input_size_of", "is_fcvit", "ATTENTION_MEASURES",
           "SIMILARITY_MEASURES", "attention_measures", "similarity_measures", "query_irrelevance", "head_irrelevance",
           "top_mass", "normalized_entropy", "mean_pairwise_cosine", "mean_pairwise_correlation", "analyze_attention",
           "analyze_similarity", "query_attention"]
