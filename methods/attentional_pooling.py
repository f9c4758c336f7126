"""Attentional pooling (SA): a learned query attends to all output tokens of all frames of the frozen
image ViT, and the attended feature is classified.

The frozen backbone runs frame by frame; its output tokens go through its frozen final norm, get a
learned temporal position embedding (one vector per frame, on every token of that frame), and one
multi-head cross-attention layer (query projection from a learned query token; key, value and output
projections) pools them into one vector for the head. Frame order reaches the feature only through
the temporal position embedding: the pooling is order-aware, but nothing compares frames (the paper's
temporal-modelling mark for this row is unreadable in our copy; the measured check decides).

Parameters, ViT-B/16: query 768 + temporal embedding 8 x 768 = 6,144 + attention 4 x (768^2 + 768)
= 2,362,368 + head 307,600 = 2,676,880 = 2.68M. The paper prints 2.36M, 12% less: that is exactly the
query and the attention layer alone (2,362,368 + 768 = 2,363,136 = 2.36M), so the paper's figure for
this row appears to leave out the 0.31M head that every other row counts. With the head counted,
2.36M would leave 2.05M for the pooling, less than one attention layer of width 768.

Weight decay: none on the query and the temporal embedding. The query is a learned token like a ViT's
class token and the embedding is TimeSformer's ``time_embed``; timm's ViTs and TimeSformer declare
those in ``no_weight_decay()``. The attention's weight matrices decay, its biases do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from peft_bench.backbones import Features, VideoBackbone
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import RunContext, from_context, register_method
from peft_bench.method_api.temporal import Attention, TemporalEmbedding


@dataclass
class AttentionalPoolingConfig:
    num_frames: int | None = from_context("num_frames", "length of the temporal position embedding (None: the run's)")


class AttentionalPool(nn.Module):
    """(B, T, L, D) tokens -> (B, D): one learned query cross-attends over all T x L tokens."""

    def __init__(self, dim: int, num_heads: int, num_frames: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        # Random (not zero) start: frames are told apart from the first step.
        self.time_embedding = TemporalEmbedding(dim, num_frames, init_std=0.02)
        self.attn = Attention(dim, num_heads)

    def no_weight_decay(self) -> set[str]:
        return {"query"}

    def forward(self, features: Features) -> Tensor:
        tokens = features.tokens
        b, t, length, dim = tokens.shape
        x = features.final_norm(tokens) + self.time_embedding.for_frames(t).to(tokens.dtype)[None, :, None]
        query = self.query.to(x.dtype).expand(b, -1, -1)
        return self.attn(query, context=x.reshape(b, t * length, dim))[:, 0]


@register_method(
    "attentional_pooling",
    config=AttentionalPoolingConfig,
    group="Attentional pooling",
    architecture="SA",
    models_time=True,
)
def build(backbone: VideoBackbone, context: RunContext, cfg: AttentionalPoolingConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    pool = AttentionalPool(backbone.width, backbone.num_heads, cfg.num_frames)
    return VideoClassifier(backbone, context, pool=pool)
