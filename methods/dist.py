"""DiST (Qing et al., ICCV 2023, "Disentangling Spatial and Temporal Learning for Efficient Image-to-Video
Transfer Learning"): a frozen image encoder for space, a light network of its own for time, and an
integration branch between them that classifies; nothing back-propagates through the image encoder.

Read from the released code, alibaba-mmai-research/DiST at 4b3a09bc3c6d7933c98173c70ca0ed76f975e13d
(``models/module_zoo/branches/dist.py``, ``models/base/clip.py``, ``models/utils/optimizer.py``,
``configs/projects/dist/{k400,ssv2}/vit-b16-8+16f.yaml``). The released configurations are followed where
the paper is less specific.

**Spatial encoder.** The frozen backbone, frame by frame, on every ``spatial_stride``-th frame of the clip
(the authors' ``SPARSE_SAMPLE_ALPHA`` = 2). The outputs of the chosen blocks (all twelve,
``SELECTED_LAYERS``) are read through ``forward_intermediates``; nothing is changed inside the backbone.

**Temporal encoder.** A network of width 96 on the raw clip, every frame at full resolution: a stem
``Conv3d(3 -> 96, kernel (5, p, p), stride (1, p, p))`` (p the backbone's patch size, so its grid is the
backbone's), then one block per chosen backbone block, ``x <- QuickGELU(x + conv_s(QuickGELU(conv_t(LN(x)))))``
with ``conv_t`` a (3, 1, 1) and ``conv_s`` a (1, 3, 3) convolution, 96 -> 96 -> 96.

**Integration branch (width 384).** At each chosen block i, with ``x`` the temporal encoder's features
after its block i, ``s_i`` the spatial encoder's output of block i and ``r`` the branch's carried state
(0 at the first block):

* ``m = Linear(D -> 384)(s_i) + r``
* the temporal encoder receives ``m``: ``x <- x + repeat(Linear(384 -> 96)(m's patch tokens))``, each
  spatial frame repeated over the ``spatial_stride`` clip frames it stands for (nearest upsampling);
* the branch receives ``x`` (before that update): ``u = m + [t_cls ; Conv3d(96 -> 384, kernel and stride
  (spatial_stride, 1, 1))(x)]``, a learned [CLS] token per frame in front of the patch tokens;
* ``r = FFN(LN(u)) + TFFN(LN'(u))``: FFN is 384 -> 384 -> 384 (ratio 1, QuickGELU); TFFN runs over the
  frames of every token, pointwise 384 -> 96, a (3, 1, 1) convolution 96 -> 96, QuickGELU, pointwise
  96 -> 384 (no activation between the first two, as released).

The carried state is ``r``, not ``u + r``: the branch's residual is closed only after the last block,
``z = u + r``. **Pooling and head.** ``z`` is read by ``pooling_layers`` pooling layers (4 for K400, 2 for
SSv2, ``ADA_POOLING_LAYERS``): a learned frame token per frame attends to that frame's tokens of ``z``, then
an MLP (ratio 4); the frame tokens plus a learned embedding per frame are attended by a learned video
token, then an MLP; every attention pre-norm, 6 heads of 64, key and value normed by the query's norm,
residual throughout. The feature is ``LN(video token + Linear(D -> 384)(the last chosen block's [CLS],
averaged over frames))``, and a linear head classifies it after the run's dropout.

**Initialisation** (as released): every convolution and linear weight truncated normal (std 0.02) and
bias zero, except the attentions' fused q/k/v projection, which keeps ``nn.MultiheadAttention``'s
Xavier-uniform; tokens and per-frame embeddings truncated normal (std 0.02). DiST does not start as the
backbone. **Weight decay**: none on the tokens and per-frame embeddings (the released optimizer exempts
names ending in ``cls_token`` and ``positional_embedding``) nor on 1-D tensors. The released recipe's own
learning rate and decay (a 10x multiplier for the new network over a base rate that nothing else uses)
are the run's to choose here, as for every row.

**Frames.** The run's clip is what the temporal encoder reads; the spatial encoder sees every
``spatial_stride``-th frame. The authors' "8-frame" ViT-B/16 rows (``vit-b16-8+16f``: K400 83.6, SSv2
68.7) sample 16 frames and give 8 to CLIP: in this runner that is ``--frames 16`` with the defaults.
A run at the benchmark's usual 8 frames gives CLIP 4 frames and the temporal encoder 8 (4+8f); set
``spatial_stride=1`` for CLIP and the temporal encoder on the same 8 (8+8f). The clip's length must be a
multiple of ``spatial_stride``.

**Tiny** (96 wide, 4 blocks, 32 px in 8-px patches): the ``tiny`` preset keeps the released widths' ratios
to ViT-B's 768, D/2 = 48 for the branch and D/8 = 12 for the temporal encoder, with heads of 24 channels
(2 heads); all four blocks are read, and at the embedded default's 8 frames CLIP's stand-in sees 4 of them.
Trainable parameters: 302,984 on synthetic-appearance (K400 preset, 4 pooling layers, 8 classes) and
189,610 on synthetic-motion (SSv2 preset, 2 pooling layers, 10 classes). Measured at commit 5ff01db
(``peft-bench run --methods dist --seeds 0,1,2``, CPU, ``results/embedded_default.md``): top-1 99.0 ± 0.7
on synthetic-appearance and 36.7 ± 5.1 on synthetic-motion (seeds 31.2, 37.5, 41.2). The best
order-blind row is adapter's 19.2, so DiST is 17.5 points above it, 2.5 short of the 20-point bar: the side
network starts from random weights, and its training top-1 is still rising in the last of the embedded
default's 12 epochs. Tried on synthetic-motion, same seeds: a temporal encoder of 24 channels (D/4) gave
39.4, 31.2, 41.2 (mean 37.3), no clear gain; ``spatial_stride=1`` (the frozen encoder sees all 8 frames)
gave 35.0 at seed 0. The preset keeps the released ratios.

**Differences from the released code.** (1) The head: DiST projects the feature into CLIP's joint space
(384 x 512, no bias) and classifies by cosine similarity with CLIP's frozen text embeddings of the class
names, at CLIP's logit scale. peft-bench's backbones are vision towers with no text tower, so a linear
head (the run's dropout in front, as for every row) reads the 384-wide feature, and the projection, which
would be a second linear map in a row, is left out. (2) CLIP runs on the chosen frames only; the
released code embeds all 16 and drops half after the pre-norm, the same numbers for twice the stem's work.
(3) The per-frame [CLS] tokens and embeddings are resampled linearly for a clip of another length (the
released code only runs at its trained length).

**Parameters, CLIP ViT-B/16 (D = 768), 16-frame clip (n = 8 frames to CLIP), K400 preset, 400 classes**,
counted by hand (C = 384, c = 96):

* temporal stem: 3 x 96 x 5 x 16 x 16 + 96 = 368,736
* per chosen block: input linear D C + C = 295,296; temporal block 2c + (3c^2 + c) + (9c^2 + c) =
  110,976; to the temporal encoder C c + c = 36,960; to the branch 2 c C + C + n C = 77,184 (convolution
  and per-frame [CLS]); integration 2C + 2 (C^2 + C) + 2C + (C C/4 + C/4) + (3 (C/4)^2 + C/4) + (C/4 C + C)
  = 399,168; together 919,584, less the 36,960 the last block does not send: 11 x 919,584 + 882,624 =
  10,998,048
* per pooling layer: two attentions with their norm, 2 (2C + 4 (C^2 + C)) = 1,184,256; two MLPs with
  their norm, 2 (2C + 4C^2 + 4C + 4C^2 + C) = 2,364,672; frame embedding n C = 3,072; together 3,552,000,
  x 4 = 14,208,000
* video and frame tokens 2C = 768; [CLS] input D C + C = 295,296; final norm 2C = 768
* head 384 x 400 + 400 = 154,000

Total **26,025,616 = 26.03M**. SSv2 preset (2 pooling layers, 174 classes): 7,104,000 for pooling and a
66,990 head, **18,834,606 = 18.83M**. The released network trains 26,105,184 (K400) and 19,001,184 (SSv2):
these less the head, plus the 384 x 512 projection into CLIP's text space (196,608) and the last block's
36,960 that never get a gradient. The authors' README gives no parameter count to compare with. At an
8-frame clip (4 frames to CLIP) the per-frame tokens and embeddings are half as many: 26,001,040 (K400).
``tests/test_method_dist.py`` checks the count part by part.

**GFLOPs**, CLIP ViT-B/16, K400 preset, ``peft-bench account --methods dist --backbone clip_vitb16
--dataset k400 --frames 16 --views 1x3`` (fvcore, 1 multiply-add = 1 FLOP, convolutions and norms counted, no op
uncounted): 163.1 per 16-frame clip, of which CLIP on its 8 frames is 140.7 and DiST's own network 22.4;
489.3 for the released test protocol of 3 clips x 1 crop (``NUM_ENSEMBLE_VIEWS`` 3,
``NUM_SPATIAL_CROPS`` 1). SSv2 preset 162.1 per clip, 486.4 for 3. The authors' README gives no GFLOPs.
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
class DiSTConfig:
    temporal_width: int = 96  # TEMPORAL_DIM: channels of the temporal encoder
    integration_width: int = 384  # INTEGRATION_DIM: channels of the integration branch
    layers: tuple[int, ...] | None = None  # SELECTED_LAYERS: backbone blocks read (None = every block)
    spatial_stride: int = 2  # SPARSE_SAMPLE_ALPHA: the frozen encoder sees every n-th frame of the clip
    temporal_patch: int = 5  # T_PATCH_SIZE: frames the temporal stem spans
    temporal_kernel: int = 3  # TEMPORAL_KERNEL_SIZE: the temporal convolutions' span in frames
    temporal_mlp_ratio: float = 1.0  # TEMPORAL_CONV_MLP_RATIO
    integration_mlp_ratio: float = 1.0  # INTEGRATION_MLP_RATIO
    integration_temporal_ratio: float = 0.25  # INTEGRATION_TEMPORAL_MLP_RATIO: the integration TFFN's width
    pooling_layers: int = 4  # ADA_POOLING_LAYERS: 4 in the K400 configuration, 2 in the SSv2 one
    head_width: int = 64  # channels per attention head in the pooling layers (384 // 64 = 6 heads)
    num_frames: int | None = from_context("num_frames", "clip length the per-frame tokens are sized for")

    def __post_init__(self):
        for name in (
            "temporal_width",
            "integration_width",
            "spatial_stride",
            "temporal_patch",
            "temporal_kernel",
            "pooling_layers",
            "head_width",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("temporal_patch", "temporal_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(
                    f"{name} must be odd (the convolution keeps the frame count), got {getattr(self, name)}"
                )
        if self.integration_width % self.head_width:
            raise ValueError(
                f"integration_width {self.integration_width} is not a multiple of head_width {self.head_width}"
            )
        if self.num_frames is not None and self.num_frames % self.spatial_stride:
            raise ValueError(
                f"a clip of {self.num_frames} frames cannot be split by spatial_stride {self.spatial_stride}"
            )


def channels_last(x: Tensor) -> Tensor:
    """(B, C, ...) -> (B, ..., C)."""
    return x.movedim(1, -1)


class TemporalBlock(nn.Module):
    """One block of the temporal encoder on (B, c, T, h, w): ``QuickGELU(x + conv_s(QuickGELU(conv_t(LN(x)))))``."""

    def __init__(self, width: int, kernel: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm = nn.LayerNorm(width)
        self.conv_t = nn.Conv3d(width, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0))
        self.conv_s = nn.Conv3d(hidden, width, (1, 3, 3), padding=(0, 1, 1))
        self.act = QuickGELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(channels_last(x)).movedim(-1, 1)
        return self.act(x + self.conv_s(self.act(self.conv_t(y))))


class IntegrationBlock(nn.Module):
    """The branch's update ``FFN(LN(u)) + TFFN(LN'(u))`` on (B, n, L, C): per token, and over each token's frames."""

    def __init__(self, width: int, mlp_ratio: float, temporal_ratio: float, kernel: int):
        super().__init__()
        hidden, narrow = int(width * mlp_ratio), int(width * temporal_ratio)
        self.norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, width))
        self.norm_t = nn.LayerNorm(width)
        self.tffn = nn.Sequential(  # on (B, C, n, L, 1): pointwise, over frames, QuickGELU, pointwise
            nn.Conv3d(width, narrow, 1),
            nn.Conv3d(narrow, narrow, (kernel, 1, 1), padding=(kernel // 2, 0, 0)),
            QuickGELU(),
            nn.Conv3d(narrow, width, 1),
        )

    def forward(self, u: Tensor) -> Tensor:
        over_frames = self.tffn(self.norm_t(u).movedim(-1, 1).unsqueeze(-1))  # (B, C, n, L, 1)
        return self.ffn(self.norm(u)) + channels_last(over_frames.squeeze(-1))


class DiSTStage(nn.Module):
    """Everything DiST does at one chosen backbone block: the temporal encoder's block, then the exchange
    between it and the integration branch, then the branch's update."""

    def __init__(self, dim: int, cfg: DiSTConfig, spatial_frames: int, last: bool = False):
        super().__init__()
        c, wide = cfg.temporal_width, cfg.integration_width
        self.stride = cfg.spatial_stride
        self.temporal = TemporalBlock(c, cfg.temporal_kernel, cfg.temporal_mlp_ratio)
        self.input = nn.Linear(dim, wide)  # the spatial encoder's block output into the branch
        # After the last stage nothing reads the temporal encoder, so that stage sends nothing to it (the
        # released network has the layer, but its output is never used and it never gets a gradient).
        self.to_temporal = None if last else nn.Linear(wide, c)
        self.to_integration = nn.Conv3d(c, wide, (self.stride, 1, 1), stride=(self.stride, 1, 1))
        self.frame_cls = TemporalEmbedding(wide, spatial_frames, init_std=0.02)  # the [CLS] slot, per frame
        self.integration = IntegrationBlock(
            wide, cfg.integration_mlp_ratio, cfg.integration_temporal_ratio, cfg.temporal_kernel
        )

    def forward(self, x: Tensor, spatial: Tensor, carried: Tensor | float) -> tuple[Tensor | None, Tensor, Tensor]:
        """x (B, c, T, h, w), spatial (B, n, 1 + h w, D) -> (next x, u, carried state r); no next x after
        the last stage."""
        x = self.temporal(x)
        m = self.input(spatial) + carried
        b, n = m.shape[:2]
        next_x = None
        if self.to_temporal is not None:
            patches = self.to_temporal(m[:, :, 1:]).movedim(-1, 1)  # (B, c, n, h w), nearest-upsampled in time
            next_x = x + patches.reshape(b, -1, n, *x.shape[3:]).repeat_interleave(self.stride, dim=2)
        grid = channels_last(self.to_integration(x).flatten(3))  # (B, n, h w, C)
        cls = self.frame_cls.for_frames(n).to(grid.dtype).expand(b, n, -1).unsqueeze(2)
        u = m + torch.cat([cls, grid], dim=2)
        return next_x, u, self.integration(u)


class CrossAttention(nn.Module):
    """Pre-norm attention of queries over a context, both through the same LayerNorm (as released)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        return self.attn(self.norm(query), self.norm(context))


class PreNormMLP(nn.Module):
    def __init__(self, width: int, ratio: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * ratio), QuickGELU(), nn.Linear(width * ratio, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm(x))


class PoolingLayer(nn.Module):
    """Frame tokens attend to their frame's tokens; the video token attends to the frame tokens (each
    with its frame's embedding); each followed by an MLP, all residual."""

    def __init__(self, width: int, num_heads: int, spatial_frames: int):
        super().__init__()
        self.spatial_attn = CrossAttention(width, num_heads)
        self.spatial_mlp = PreNormMLP(width)
        self.time_embedding = TemporalEmbedding(width, spatial_frames, init_std=0.02)
        self.temporal_attn = CrossAttention(width, num_heads)
        self.temporal_mlp = PreNormMLP(width)

    def forward(self, tokens: Tensor, video_token: Tensor, frame_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, n, L, C), video token (B, 1, C), frame tokens (B n, 1, C) -> the two updated."""
        b, n = tokens.shape[:2]
        frame_tokens = frame_tokens + self.spatial_attn(frame_tokens, tokens.flatten(0, 1))
        frame_tokens = frame_tokens + self.spatial_mlp(frame_tokens)
        frames = frame_tokens.view(b, n, -1) + self.time_embedding.for_frames(n).to(frame_tokens.dtype)
        video_token = video_token + self.temporal_attn(video_token, frames)
        video_token = video_token + self.temporal_mlp(video_token)
        return video_token, frame_tokens


class DiSTNetwork(nn.Module):
    """The temporal encoder, the integration branch and its pooling: Features (with the clip) -> (B, C)."""

    def __init__(self, backbone: VideoBackbone, cfg: DiSTConfig):
        super().__init__()
        if cfg.num_frames is None:
            raise ValueError("DiST sizes its per-frame tokens by the clip length: num_frames is not resolved")
        self.layers = take_indices(cfg.layers, len(backbone.blocks))
        if not self.layers:
            raise ValueError("DiST needs at least one backbone block to read")
        self.stride = cfg.spatial_stride
        wide, spatial_frames, patch = cfg.integration_width, cfg.num_frames // cfg.spatial_stride, backbone.patch_size
        self.stem = nn.Conv3d(
            3,
            cfg.temporal_width,
            (cfg.temporal_patch, patch, patch),
            stride=(1, patch, patch),
            padding=(cfg.temporal_patch // 2, 0, 0),
        )
        self.stages = nn.ModuleList(
            DiSTStage(backbone.width, cfg, spatial_frames, last=i == len(self.layers) - 1)
            for i in range(len(self.layers))
        )
        heads = wide // cfg.head_width
        self.pooling = nn.ModuleList(PoolingLayer(wide, heads, spatial_frames) for _ in range(cfg.pooling_layers))
        self.video_token = nn.Parameter(torch.zeros(1, 1, wide))
        self.frame_token = nn.Parameter(torch.zeros(1, 1, wide))
        self.cls_input = nn.Linear(backbone.width, wide)  # the last chosen block's [CLS], averaged over frames
        self.norm = nn.LayerNorm(wide)
        self.apply(init_as_released)
        for token in (self.video_token, self.frame_token):
            nn.init.trunc_normal_(token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"video_token", "frame_token"}  # the per-frame tables declare theirs (TemporalEmbedding)

    def forward(self, features: Features) -> Tensor:
        video = features.video
        if video is None:
            raise ValueError("DiST's temporal encoder reads the clip: the classifier must be built with video=True")
        b, frames, n = video.shape[0], video.shape[1], features.num_frames
        if frames != n * self.stride:
            raise ValueError(
                f"DiST with spatial_stride {self.stride} needs a clip whose length is a multiple of "
                f"{self.stride}; got {frames} frames (the spatial encoder saw {n})"
            )
        x = self.stem(video.transpose(1, 2))  # (B, c, T, h, w)
        carried: Tensor | float = 0.0
        u: Tensor | None = None
        for layer, stage in zip(self.layers, self.stages, strict=True):
            x, u, carried = stage(x, features.intermediates[layer], carried)
        assert u is not None  # __init__ refuses an empty self.layers
        tokens = u + carried
        video_token = self.video_token.to(tokens.dtype).expand(b, -1, -1)
        frame_tokens = self.frame_token.to(tokens.dtype).expand(b * n, -1, -1)
        for pooling in self.pooling:
            video_token, frame_tokens = pooling(tokens, video_token, frame_tokens)
        cls = self.cls_input(features.intermediates[self.layers[-1]][:, :, 0].mean(dim=1))
        return self.norm(video_token[:, 0] + cls)


def init_as_released(module: nn.Module) -> None:
    """Truncated-normal (0.02) weights and zero biases for every convolution and linear layer; an
    attention's fused q/k/v keeps nn.MultiheadAttention's Xavier-uniform (what the released
    ``_init_weights`` leaves alone)."""
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    if isinstance(module, Attention):
        nn.init.xavier_uniform_(module.qkv.weight)


@register_method(
    "dist",
    config=DiSTConfig,
    group=LATER_METHODS,
    architecture="SA",
    models_time=True,
    presets={
        "k400": {"pooling_layers": 4},
        "ssv2": {"pooling_layers": 2},
        # tiny (96 wide, 4 blocks, 8-px patches): the released widths' ratios to ViT-B's 768, D/2 and D/8,
        # with heads of tiny's own 24 channels.
        "tiny": {"integration_width": 48, "temporal_width": 12, "head_width": 24},
    },
)
def build(backbone: VideoBackbone, context: RunContext, cfg: DiSTConfig) -> VideoClassifier:
    network = DiSTNetwork(backbone, cfg)
    return VideoClassifier(
        backbone,
        context,
        pool=network,
        feature_dim=cfg.integration_width,
        intermediates=network.layers,
        video=True,
        frame_stride=cfg.spatial_stride,
    )
