"""AIM (Yang et al., "AIM: Adapting Image Models for Efficient Video Action Recognition", ICLR 2023):
spatial, temporal and joint bottleneck adapters in every block of the frozen image ViT, the temporal one
behind the block's own frozen attention applied across frames.

Read from the released code, taoyang1122/adapt-image-models at b3580d2 (mmaction/models/backbones/vit_clip.py,
configs/recognition/vit/vitclip_base_{k400,sthv2}.py, tools/train.py). Each block computes, on tokens
(B*T, L, D) with the [CLS] token of every frame included everywhere::

    x = x + T(MSA_time(LN1(x)))                   temporal adaptation
    x = x + S(MSA(LN1(x)))                        spatial adaptation
    x = x + MLP(LN2(x)) + s * J(LN2(x))           joint adaptation

* ``MSA_time`` is the block's frozen attention (same LN1, q/k/v and output projections, no new weights)
  over the T tokens at one token position, [CLS] included: (B*T, L, D) -> (B*L, T, D) and back.
* ``T`` (T-Adapter) and ``J`` (the MLP-Adapter) are bottlenecks without skip, ``up(GELU(down(.)))``;
  ``S`` (S-Adapter) has one, ``h + up(GELU(down(h)))`` on the attention's output. Width D / 4 (their
  ``mlp_ratio=0.25``). ``down``: truncated normal (std 0.02), zero bias (their ``_init_weights``);
  ``up``: weight and bias zero (their ``init_weights`` zeroes every adapter's ``D_fc2``). The blocks
  therefore start as the frozen ones: the temporal branch and ``J`` add zero and ``S`` is the identity.
* A learned temporal embedding (T x D, zero at the start) is added to every token of frame t after the
  position embedding and before the pre-norm (``ln_pre``): the backbone's ``before_pre_norm`` hook.
  Attention over time is blind to order on its own (shuffling the frames shuffles its outputs), so this
  embedding is what lets AIM tell a clip from its reversal.
* What trains (their tools/train.py): every ``Adapter``, ``temporal_embedding``, ``ln_post`` (the final
  norm) and the head. Pooling as their I3D head reads the backbone: ``ln_post`` on each frame's [CLS],
  then the mean over frames (this project's default pools first and normalises after), the run's
  dropout, a linear head.
* Drop path on the temporal branch and on ``s * J``, its rate rising linearly over the blocks from 0 to
  ``drop_path`` (0.2 in both released CLIP ViT-B/16 configs). As in the released code, where timm's
  ``DropPath`` meets the sequence-first (L, B*T, D) layout of CLIP's blocks, a branch is dropped per
  token position, for every clip and frame of the batch at once, not per clip.
* K400 (the default): ``s = 0.5``. SSv2 (preset ``ssv2``, their ``num_tadapter=2, adapter_scale=1``):
  ``s = 1`` and a second temporal adapter, with skip, between LN1 and the temporal attention
  (``T_Adapter_in``).

Parameters, CLIP ViT-B/16 (D = 768, width 192): an adapter is 768 x 192 + 192 + 192 x 768 + 768 = 295,872.
K400: 12 blocks x 3 adapters = 10,651,392 + temporal embedding 8 x 768 = 6,144 + ln_post 2 x 768 = 1,536
+ 400-class head 307,600 = 10,966,672 = 10.97M, against the authors' 11M (README, K400 table: -0.3%).
Their figure is what tools/train.py logs as tunable, the head included (``cls_head`` trains); without the
head it would be 10.66M, 3% under 11M. Their total of 97M is the same sum with the backbone's 85.80M
(96.77M). SSv2: 12 x 4 adapters = 14,201,856 + 6,144 + 1,536 + 174-class head 133,806 = 14,343,342 = 14.34M.

GFLOPs, CLIP ViT-B/16, 8 frames, 224 px, measured with ``peft-bench account --methods aim --backbone
clip_vitb16 --dataset k400`` (fvcore, one multiply-add = one FLOP, no uncounted op): 202.31 per view, 606.94
at 8x3x1 (three views), against the authors' 606 (README, 8x3x1). Over the frozen image model's 140.66 per
view: the second pass through q/k/v and the output projection for the temporal attention, 12 x 1,576 tokens
x 4 D^2 = 44.6; 36 adapters x 1,576 tokens x 2 x 768 x 192 = 16.7; attention over 8 frames and LN1 again,
0.3. SSv2 preset (``--dataset ssv2``): 207.89 per view, 623.67 at 8x3x1 (12 more adapters).

On ``tiny`` (96 wide, 4 blocks, 17 tokens a frame) no preset is needed: the width follows ``ratio`` (24),
every block is adapted and the drop-path rate rises over the 4 blocks (0, 0.067, 0.133, 0.2). An adapter
is 96 x 24 + 24 + 24 x 96 + 96 = 4,728: synthetic-appearance (K400 preset, 8 classes) trains 12 x 4,728
+ 8 x 96 + 192 + 776 = 58,472 parameters, synthetic-motion (SSv2 preset, 10 classes) 16 x 4,728 + 768
+ 192 + 970 = 77,578 (both as the runs log them).

Weight decay: the authors' model lists ``temporal_embedding`` in ``no_weight_decay()``, and so does this
one (``TemporalEmbedding``). Their mmcv optimizer never calls that method: in the released runs it decayed
at 0.05, as did the adapters' weights and biases and the head (only the norms were exempted, by name).
Here the shared recipe's rule applies: 1-D tensors (biases, ln_post) and declared embeddings never decay.

Differences from the released code: the head starts as this project's shared head (truncated normal, std
0.02; theirs: normal, std 0.01); the recipe (optimiser, schedule, augmentation) is the benchmark's, not
theirs; attention runs through ``scaled_dot_product_attention`` (same result).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from peft_bench.backbones import FrameBlock, VideoBackbone
from peft_bench.method_api.layers import WrappedBlock, resolve_layers
from peft_bench.method_api.model import NormedClsMean, VideoClassifier
from peft_bench.method_api.registry import LATER_METHODS, RunContext, from_context, register_method
from peft_bench.method_api.temporal import TemporalEmbedding


@dataclass
class AIMConfig:
    ratio: float = 0.25  # adapter bottleneck width / backbone width (their mlp_ratio)
    scale: float = 0.5  # s: the joint (MLP) adapter's output is scaled before it joins the MLP's
    temporal_input_adapter: bool = False  # a second temporal adapter before the temporal attention (SSv2)
    drop_path: float = 0.2  # the last block's drop-path rate on the temporal and joint branches
    temporal_embedding: bool = True  # the learned per-frame embedding before the pre-norm
    num_frames: int | None = from_context("num_frames", "length of the learned temporal embedding (None: the run's)")
    layers: tuple[int, ...] | None = None  # which blocks are adapted (None = all)

    def __post_init__(self):
        if not 0 < self.ratio <= 4:
            raise ValueError(f"ratio must lie in (0, 4], got {self.ratio}")
        if not 0 <= self.drop_path < 1:
            raise ValueError(f"drop_path must lie in [0, 1), got {self.drop_path}")


class Adapter(nn.Module):
    """AIM's bottleneck ``up(GELU(down(x)))``, plus ``x`` when ``skip``; ``up`` starts at zero."""

    def __init__(self, dim: int, width: int, skip: bool):
        super().__init__()
        self.skip = skip
        self.down = nn.Linear(dim, width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        for zeroed in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(zeroed)

    def forward(self, x: Tensor) -> Tensor:
        delta = self.up(self.act(self.down(x)))
        return x + delta if self.skip else delta


def drop_token_paths(x: Tensor, rate: float, training: bool) -> Tensor:
    """Drop path as the released code applies it: one draw per token position of (N, L, D), shared by
    all N frames of the batch, kept paths scaled by 1 / (1 - rate)."""
    if rate == 0 or not training:
        return x
    keep = 1 - rate
    return x * x.new_empty(1, x.shape[1], 1).bernoulli_(keep) / keep


class AIMBlock(WrappedBlock):
    """A frozen block with AIM's temporal branch in front and its spatial and joint adapters."""

    def __init__(
        self, block: FrameBlock, dim: int, width: int, scale: float, drop_path: float, temporal_input_adapter: bool
    ):
        super().__init__(block)
        self.temporal_in = Adapter(dim, width, skip=True) if temporal_input_adapter else None
        self.temporal = Adapter(dim, width, skip=False)
        self.spatial = Adapter(dim, width, skip=True)
        self.joint = Adapter(dim, width, skip=False)
        self.scale = scale
        self.drop_path = drop_path

    def attend_over_time(self, x: Tensor, num_frames: int) -> Tensor:
        """The block's frozen attention across the frames at each token position, then the T-Adapter."""
        n, length, dim = x.shape
        b = n // num_frames
        seq = x.view(b, num_frames, length, dim).transpose(1, 2).reshape(b * length, num_frames, dim)
        h = self.norm1(seq)
        if self.temporal_in is not None:
            h = self.temporal_in(h)
        q, k, v = self.project_qkv(h)
        out = self.temporal(self.project_out(F.scaled_dot_product_attention(q, k, v)))
        return out.view(b, length, num_frames, dim).transpose(1, 2).reshape(n, length, dim)

    def attention(self, x: Tensor, num_frames: int) -> Tensor:
        q, k, v = self.project_qkv(self.norm1(x))
        return self.scale_attention(self.spatial(self.project_out(self.attend(q, k, v, num_frames))))

    def mlp(self, x: Tensor, num_frames: int) -> Tensor:
        h = self.norm2(x)
        joint = drop_token_paths(self.scale * self.joint(h), self.drop_path, self.training)
        return self.scale_mlp(self.feed_forward(h)) + joint

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        x = x + drop_token_paths(self.attend_over_time(x, num_frames), self.drop_path, self.training)
        x = x + self.attention(x, num_frames)
        return x + self.mlp(x, num_frames)


@register_method(
    "aim",
    config=AIMConfig,
    group=LATER_METHODS,
    architecture="SA+TA",
    models_time=True,
    presets={
        "k400": {"scale": 0.5, "temporal_input_adapter": False},
        "ssv2": {"scale": 1.0, "temporal_input_adapter": True},
    },
)
def build(backbone: VideoBackbone, context: RunContext, cfg: AIMConfig) -> VideoClassifier:
    assert cfg.num_frames is not None  # a from_context field: MethodSpec.create has resolved it
    layers = resolve_layers(cfg.layers, len(backbone.blocks))
    width = int(backbone.width * cfg.ratio)
    depth = len(backbone.blocks)
    rates = [cfg.drop_path * i / max(depth - 1, 1) for i in range(depth)]  # 0 to drop_path over all blocks, as theirs
    for i in layers:
        backbone.blocks[i] = AIMBlock(
            backbone.blocks[i], backbone.width, width, cfg.scale, rates[i], cfg.temporal_input_adapter
        )
    if cfg.temporal_embedding:
        if backbone.before_pre_norm is not None:
            raise ValueError("the backbone already has a module before its pre-norm")
        backbone.before_pre_norm = TemporalEmbedding(backbone.width, cfg.num_frames)
    backbone.final_norm.requires_grad_(True)  # ln_post trains in AIM
    return VideoClassifier(backbone, context, pool=NormedClsMean())
