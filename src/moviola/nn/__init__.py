"""Blocks shared by every backbone."""
from moviola.nn.attention import Attention, CrossAttention, apply_rope
from moviola.nn.embeddings import (LabelEmbedder, TimestepEmbedder, rope_1d, sincos_1d, sincos_2d,
                                   sincos_temporal, timestep_embedding)
from moviola.nn.mlp import Mlp
from moviola.nn.modulation import modulate

__all__ = ["Attention", "CrossAttention", "LabelEmbedder", "Mlp", "TimestepEmbedder", "apply_rope", "modulate",
           "rope_1d", "sincos_1d", "sincos_2d", "sincos_temporal", "timestep_embedding"]
