"""Blocks shared by every backbone: attention (full and windowed), embeddings, modulation, patches, the
transformer block, temporal layers, inputs beside x_t. A family composes these; it never copies one."""
from moviola.nn.attention import Attention, ConcatKVAttention, CrossAttention, apply_rope
from moviola.nn.embeddings import (LabelEmbedder, TimestepEmbedder, rope_1d, sincos_1d, sincos_2d,
                                   sincos_temporal, timestep_embedding)
from moviola.nn.image_tokens import PatchImageEncoder
from moviola.nn.inputs import DepthToSpaceUpsample, masked_mean, self_cond_input, text_tokens, with_context
from moviola.nn.mlp import Mlp
from moviola.nn.modulation import (MODULATIONS, AdaLNLoRA, AdaLNLoRAShared, AdaLNSingle, AdaLNZero, LoRACondition,
                                   Modulation, TokenInjection, modulate)
from moviola.nn.patch import PatchEmbed, TubeletEmbed, unpatchify
from moviola.nn.resampler import PerceiverAttention, Resampler
from moviola.nn.temporal import AlphaBlend, TemporalConvBlock, TemporalSelfAttention
from moviola.nn.transformer import FinalLayer, ModulatedBlock, TransformerBlock
from moviola.nn.window import (RelativePositionBias, WindowAttention, resize_relative_table, resize_table,
                               window_merge, window_partition)

__all__ = ["AdaLNLoRA", "AdaLNLoRAShared", "AdaLNSingle", "AdaLNZero", "AlphaBlend", "Attention", "ConcatKVAttention",
           "CrossAttention", "DepthToSpaceUpsample", "FinalLayer", "LabelEmbedder", "LoRACondition", "MODULATIONS",
           "Mlp", "ModulatedBlock", "Modulation", "PatchEmbed", "PatchImageEncoder", "PerceiverAttention",
           "RelativePositionBias", "Resampler", "TemporalConvBlock", "TemporalSelfAttention", "TimestepEmbedder",
           "TokenInjection", "TransformerBlock", "TubeletEmbed", "WindowAttention", "apply_rope", "masked_mean",
           "modulate", "resize_relative_table", "resize_table", "rope_1d", "self_cond_input", "sincos_1d",
           "sincos_2d", "sincos_temporal", "text_tokens", "timestep_embedding", "unpatchify", "window_merge",
           "window_partition", "with_context"]
