"""EVL (Lin et al., "Frozen CLIP Models are Efficient Video Learners", ECCV 2022): a frozen image ViT and,
after it, a light Transformer decoder whose one learned query reads the last blocks' tokens of every
frame, with local temporal modules in front of each decoder layer.

Read from the released code, github.com/OpenGVLab/efficient-video-recognition at b282e8b (``model.py``:
``EVLTransformer``, ``EVLDecoder``, ``TemporalCrossAttention``; ``vision_transformer.py``:
``TransformerDecoderLayer``, ``Attention``; ``main.py``; ``scripts/train_k400_vitb16_8f_dec4x768.sh``),
the script behind the README's ViT-B/16 8-frame row (K400 82.8, the README's re-run of the paper's 82.9).

Placement. The backbone runs frame by frame, frozen (no gradient ever goes back into it), and hands over
the outputs of its last N = 4 blocks and those blocks' attention queries and keys (``intermediates=4,
qk=True``). Decoder layer i (i = 0..N-1) reads block ``depth - N + i``, in order: the last decoder
layer reads the last block. Before layer i, the block's tokens (B, T, L, D), [CLS] included, get

* a depthwise temporal convolution (``Conv1d(D, D, 3, padding=1, groups=D)`` over the frames of each
  token and channel, PyTorch's default initialisation, not zero), added to the tokens;
* a temporal position embedding (T x D, zero at start), added to every token of a frame;
* temporal cross-attention (zero at start): for each frame, the attention map between its patch
  queries and the patch keys of the previous frame (and, with a second table, of the next frame), from
  the frozen block's own q and k, softmax over the keys, averaged over heads, weighs a learned table
  of one D-vector per relative spatial offset ((2h-1)(2w-1) offsets); the first frame has no previous
  and the last no next term, [CLS] gets none.

Then the layer: ``x = x + attn(norm1(x), norm3(y), norm3(y))``, ``x = x + mlp(norm2(x))`` with the query x
(B, 1, D) and y the T x L frame tokens; 4D^2 + 4D attention (q, k, v, out projections, one head per 64
channels: the backbone's head count), MLP D -> 4D -> D with QuickGELU and dropout 0.5 after the
activation. The query's output goes through a new LayerNorm, the run's head dropout (the released
``cls_dropout`` is 0.5, the K400 recipe's too) and a new linear head. The backbone's own [CLS] is not
combined with it (the released forward classifies ``decoder(...)[:, 0]`` alone).

Initialisation as released: attention projections Xavier-uniform with zero biases, MLP Xavier-uniform
with N(0, 1e-6) biases, LayerNorms (1, 0), the temporal convolution and the head PyTorch's defaults,
position embeddings and cross-attention tables zero, and the query zero: ``EVLDecoder`` defines a
N(0, 0.02) initialisation for it but never calls it, so the first step's query attends uniformly.

Parameters, CLIP ViT-B/16 (D = 768, 14 x 14 patches, T = 8), per decoder layer:
attention 4 (D^2 + D) = 2,362,368; MLP (4D^2 + 4D) + (4D^2 + D) = 4,722,432; three LayerNorms 4,608;
temporal convolution 3D + D = 3,072; position embedding 8D = 6,144; cross-attention 2 x 27^2 x D
= 1,119,744; together 8,218,368, times 4 = 32,873,472. Plus the query 768, the head's LayerNorm 1,536
and a 400-class linear head 307,600: 33,183,376 = 33.18M on K400, all of it after the backbone. The
README's K400 row gives no parameter count to compare with. The released model holds its frozen
backbone outside its parameters (``self.backbone = [backbone]``), so its own ``model.parameters()`` are
exactly these modules; the count above is theirs, read from their shapes. 4.48M of it, the
cross-attention tables (one D-vector per relative offset), grows with the patch grid: at 336 px
(24 x 24 patches) they would be 4 x 2 x 47^2 x D = 13.6M.

GFLOPs, CLIP ViT-B/16, 8 frames, 224 px (``peft-bench account --methods evl --backbone clip_vitb16
--dataset k400 --views 1x3``; fvcore, 1 multiply-add = 1 FLOP, random weights): 151.47 per view, 454.41
for the released test protocol's 1 x 3 views; the frozen backbone is 140.66 of each view (the linear
probe's 421.97 / 3). Of the decoder's 10.81 per view, 7.49 are its four layers (the k and v projections
of 8 x 197 tokens, almost all of it) and 3.32 the cross-attention maps and their tables (computed as
released: the offset table gathered to (P, P, D), then weighted by the map). The README's row gives no
GFLOPs to compare with.

On ``tiny`` (the embedded default: D = 96, 4 heads, 4 blocks, a 4 x 4 patch grid) no preset is needed:
width, heads and the offset tables follow the backbone, and the default four decoder layers read all four
blocks. Per layer: attention 37,248, MLP 74,208, norms 576, temporal modules 384 + 8 x 96 + 2 x 7^2 x 96
= 10,560; with the query, the head's LayerNorm and a 10-class head, 491,626 trainable parameters, about
the size of tiny's whole backbone (on ViT-B/16 the decoder is 38% of it: it reads a third of the blocks).
A ``tiny`` preset with fewer layers (2 would keep the decoder at half the backbone) was not tried.

Weight decay: the released optimizer is AdamW(model.parameters(), weight_decay=0.05), every trainable
tensor decayed; so this method declares no exemption (the position embeddings and tables decay, unlike
the TimeSformer-style embedding of other rows). The runner still never decays 1-D tensors (biases,
norms and the 1-D query), which the released code does.

Differences from the released code, all outside the ViT-B/16 8-frame configuration's forward pass:
the frozen backbone runs in the run's precision (the released code casts its linear layers to fp16);
the position embedding is resampled linearly when a clip has another frame count than it was built for
(the released code asserts equality); ``num_heads`` defaults to the backbone's (the released scripts
pass 12 for ViT-B/16 and 16 for ViT-L/14, the backbones' own); the decoder's q/k/v width is D (the
released ``decoder_qkv_dim`` equals D in every script). The frozen feature cache serves this method:
it stores the last N blocks' outputs and their q and k (``peft_bench.train.feature_cache``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.transformer import QuickGELU
from torch import Tensor, nn

from peft_bench.backbones import Features, VideoBackbone
from peft_bench.backbones.base import take_indices
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import LATER_METHODS, RunContext, from_context, register_method
from peft_bench.method_api.temporal import Attention, TemporalEmbedding


@dataclass
class EVLConfig:
    num_layers: int = 4  # decoder layers, one per each of the backbone's last num_layers blocks
    num_heads: int | None = None  # decoder attention heads (None: the backbone's, as the released scripts)
    mlp_ratio: float = 4.0  # decoder MLP width / D
    mlp_dropout: float = 0.5  # after the decoder MLP's activation (the released decoder_mlp_dropout)
    temporal_conv: bool = True  # the local temporal modules, each of which can be switched off as released
    temporal_position_embedding: bool = True
    temporal_cross_attention: bool = True
    num_frames: int | None = from_context("num_frames", "length of the temporal position embeddings (None: the run's)")

    def __post_init__(self):
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if self.num_heads is not None and self.num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {self.num_heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0 <= self.mlp_dropout < 1:
            raise ValueError(f"mlp_dropout must lie in [0, 1), got {self.mlp_dropout}")


def relative_offset_index(height: int, width: int) -> Tensor:
    """(P, P) with P = height * width: for query patch p and key patch r (row-major), the index of their
    offset (row_p - row_r, col_p - col_r) among the (2 height - 1) (2 width - 1) possible ones."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    row_offset = rows[:, None] - rows[None, :] + height - 1
    col_offset = cols[:, None] - cols[None, :] + width - 1
    return row_offset * (2 * width - 1) + col_offset


class TemporalCrossAttention(nn.Module):
    """What a frame's patches learn from the attention map to the neighbouring frame's patches.

    For frames t and t-1 (``previous``) and t and t+1 (``next``): softmax(q_t k_s^T / sqrt(d)) over the
    patches of frame s, averaged over heads, (P, P); each entry weighs the learned D-vector of its
    relative spatial offset, summed over the keys -> (P, D) per frame. Both tables start at zero."""

    offset_index: Tensor  # a buffer (register_buffer below)

    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        height, width = grid
        offsets = (2 * height - 1) * (2 * width - 1)
        self.grid = grid
        self.previous = nn.Parameter(torch.zeros(offsets, dim))  # the released w1
        self.next = nn.Parameter(torch.zeros(offsets, dim))  # the released w2
        self.register_buffer("offset_index", relative_offset_index(height, width).flatten(), persistent=False)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        """The frozen block's q and k (B, T, heads, L, d), [CLS] first -> (B, T, L, D), zero on [CLS]."""
        b, t, _, length, _ = q.shape
        patches = length - 1
        if patches != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"EVL's temporal cross-attention was built for a {self.grid[0]}x{self.grid[1]} patch "
                f"grid, got {patches} patches: run the backbone at the input size it was built for"
            )
        q, k = q[..., 1:, :], k[..., 1:, :]
        from_previous = self.neighbour_term(q[:, 1:], k[:, :-1], self.previous)  # frames 1..T-1
        from_next = self.neighbour_term(q[:, :-1], k[:, 1:], self.next)  # frames 0..T-2
        no_frame = from_previous.new_zeros(b, 1, patches, from_previous.shape[-1])
        mixed = torch.cat([no_frame, from_previous], dim=1) + torch.cat([from_next, no_frame], dim=1)
        return torch.cat([mixed.new_zeros(b, t, 1, mixed.shape[-1]), mixed], dim=2)

    def neighbour_term(self, q: Tensor, k: Tensor, table: Tensor) -> Tensor:
        """q of some frames, k of their neighbours (B, T', heads, P, d) -> (B, T', P, D)."""
        scores = torch.einsum("bthqd,bthkd->bthqk", q * q.shape[-1] ** -0.5, k)
        attention = scores.softmax(dim=-1).mean(dim=2)  # (B, T', P, P), heads averaged
        patches = attention.shape[-1]
        weights = table.index_select(0, self.offset_index).view(patches, patches, table.shape[-1])
        return torch.einsum("btqk,qkc->btqc", attention, weights.to(attention.dtype))


class DecayedTemporalEmbedding(TemporalEmbedding):
    """The shared temporal embedding, decayed: the released EVL optimizer decays every tensor."""

    def no_weight_decay(self) -> set[str]:
        return set()


class LocalTemporal(nn.Module):
    """The local temporal modules in front of one decoder layer: block tokens (B, T, L, D) and that
    block's q, k -> tokens + temporal convolution + position embedding + temporal cross-attention."""

    def __init__(self, dim: int, num_frames: int, grid: tuple[int, int], cfg: EVLConfig):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, padding=1, groups=dim) if cfg.temporal_conv else None
        self.position = DecayedTemporalEmbedding(dim, num_frames) if cfg.temporal_position_embedding else None
        self.cross_attention = TemporalCrossAttention(dim, grid) if cfg.temporal_cross_attention else None

    def forward(self, tokens: Tensor, qk: tuple[Tensor, Tensor] | None) -> Tensor:
        b, t, length, dim = tokens.shape
        out = tokens
        if self.conv is not None:  # over each token's frames: (B, T, L, D) -> (B*L, D, T) and back
            series = tokens.permute(0, 2, 3, 1).reshape(b * length, dim, t)
            out = out + self.conv(series).view(b, length, dim, t).permute(0, 3, 1, 2)
        if self.position is not None:
            out = out + self.position.for_frames(t).to(tokens.dtype)[None, :, None]
        if self.cross_attention is not None:
            if qk is None:
                raise ValueError(
                    "EVL's temporal cross-attention reads the blocks' attention q and k: "
                    "build the classifier with qk=True"
                )
            out = out + self.cross_attention(*qk).to(tokens.dtype)
        return out


class DecoderLayer(nn.Module):
    """The query cross-attends to the frame tokens, then an MLP; pre-norm, the tokens normed on their own."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # the query's, before attention
        self.norm3 = nn.LayerNorm(dim)  # the frame tokens' (the released name)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = round(mlp_ratio * dim)
        fc1, fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.mlp = nn.Sequential(fc1, QuickGELU(), nn.Dropout(dropout), fc2)
        with torch.no_grad():
            for weight in (*self.attn.qkv.weight.chunk(3), self.attn.proj.weight):  # q, k, v and out, each D x D
                nn.init.xavier_uniform_(weight)
            for fc in (fc1, fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, query: Tensor, frames: Tensor) -> Tensor:
        query = query + self.attn(self.norm1(query), context=self.norm3(frames))
        return query + self.mlp(self.norm2(query))


class EVLDecoder(nn.Module):
    """The pool: ``Features`` (the chosen blocks' outputs and q/k) -> the normed query output (B, D)."""

    def __init__(
        self, dim: int, num_heads: int, blocks: list[int], num_frames: int, grid: tuple[int, int], cfg: EVLConfig
    ):
        super().__init__()
        self.blocks = tuple(blocks)
        self.query = nn.Parameter(torch.zeros(dim))  # zero: the released N(0, 0.02) init is never called
        self.temporal = nn.ModuleList(LocalTemporal(dim, num_frames, grid, cfg) for _ in blocks)
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, cfg.mlp_ratio, cfg.mlp_dropout) for _ in blocks)
        self.norm = nn.LayerNorm(dim)  # the released head's LayerNorm, before its dropout and linear layer

    def forward(self, features: Features) -> Tensor:
        first = features.intermediates[self.blocks[0]]
        b, t, length, dim = first.shape
        x = self.query.to(first.dtype).expand(b, 1, dim)
        for block, temporal, layer in zip(self.blocks, self.temporal, self.layers, strict=True):
            frames = temporal(features.intermediates[block], features.qk.get(block))
            x = layer(x, frames.reshape(b, t * length, dim))
        return self.norm(x[:, 0])


@register_method("evl", config=EVLConfig, group=LATER_METHODS, architecture="SA", models_time=True)
def build(backbone: VideoBackbone, context: RunContext, cfg: EVLConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    assert context.num_classes is not None  # MethodSpec.create refuses a context without it
    blocks = take_indices(cfg.num_layers, len(backbone.blocks))
    side = backbone.input_size // backbone.patch_size
    decoder = EVLDecoder(backbone.width, cfg.num_heads or backbone.num_heads, blocks, cfg.num_frames, (side, side), cfg)
    head = nn.Linear(backbone.width, context.num_classes)  # PyTorch's default initialisation, as released
    return VideoClassifier(
        backbone, context, pool=decoder, head=head, intermediates=blocks, qk=cfg.temporal_cross_attention
    )
