"""Blocks shared by every backbone: attention, embeddings, modulation, patches, the transformer block,
temporal layers. A family composes these; it never copies one."""
from moviola.nn.attention import Attention, CrossAttention, apply_rope
from moviola.nn.embeddings import (LabelEmbedder, TimestepEmbedder, rope_1d, sincos_1d, sincos_2d,
                                   sincos_temporal, timestep_embedding)
from moviola.nn.mlp import Mlp
from moviola.nn.modulation import MODULATIONS, AdaLNSingle, AdaLNZero, Modulation, TokenInjection, modulate
from moviola.nn.patch import PatchEmbed, TubeletEmbed, unpatchify
from moviola.nn.temporal import AlphaBlend, TemporalConvBlock, TemporalSelfAttention
from moviola.nn.transformer import FinalLayer, ModulatedBlock, TransformerBlock

__all__ = ["MODULATIONS", "AdaLNSingle", "AdaLNZero", "AlphaBlend", "Attention", "CrossAttention", "FinalLayer",
           "LabelEmbedder", "Mlp", "ModulatedBlock", "Modulation", "PatchEmbed", "TemporalConvBlock",
           "TemporalSelfAttention", "TimestepEmbedder", "TokenInjection", "TransformerBlock", "TubeletEmbed",
           "apply_rope", "modulate", "rope_1d", "sincos_1d", "sincos_2d", "sincos_temporal", "timestep_embedding",
           "unpatchify"]
