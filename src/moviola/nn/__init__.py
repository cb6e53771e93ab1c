"""Blocks shared by every backbone."""
from moviola.nn.attention import Attention
from moviola.nn.embeddings import (LabelEmbedder, TimestepEmbedder, sincos_1d, sincos_2d,
                                   sincos_temporal, timestep_embedding)
from moviola.nn.mlp import Mlp
from moviola.nn.modulation import modulate

__all__ = ["Attention", "LabelEmbedder", "Mlp", "TimestepEmbedder", "modulate", "sincos_1d",
           "sincos_2d", "sincos_temporal", "timestep_embedding"]
