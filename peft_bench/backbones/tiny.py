"""`tiny`: the embedded default backbone, so that a fresh laptop can run the whole benchmark.

It is an open_clip ``VisionTransformer`` (CLIP's block structure, only smaller) pre-trained here on
synthetic *still images* (shapes and colours: appearance only, never motion) as a stand-in for CLIP's
image pre-training. Like CLIP it knows what things look like and nothing about how they move, which is
the situation the benchmark studies. It is made deterministically on first use (about a minute on
2 CPU cores) and cached as safetensors under ``~/.cache/peft_bench/backbones``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import BackboneInfo, VideoBackbone
from .clip import CLIP_MEAN, CLIP_STD, ClipBackbone
from .weights import AUTO, NO_WEIGHTS, load_into, load_state_dict, strip_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyConfig:
    image_size: int = 32
    patch_size: int = 8
    width: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    # Pre-training on synthetic still images.
    render_size: int = 64  # drawn at the synthetic videos' size, then resized like video frames are
    pretrain_images: int = 6144
    pretrain_steps: int = 900
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    version: int = 2  # bump when the recipe changes in a way the fields above do not show

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def cache_dir() -> Path:
    return Path(os.environ.get("PEFT_BENCH_CACHE", Path.home() / ".cache" / "peft_bench")) / "backbones"


def build_visual(cfg: TinyConfig) -> nn.Module:
    from open_clip.model import VisionTransformer

    return VisionTransformer(
        image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width, layers=cfg.depth,
        heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, output_dim=cfg.width,
    )


def still_images(cfg: TinyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised still images at the backbone's input size, and their targets (N, 5): shape, then the
    hue, size, x and y bins of ``STILL_ATTRIBUTE_BINS``."""
    from peft_bench.data.synthetic import random_still_images

    images, labels, _, attributes = random_still_images(cfg.pretrain_images, cfg.render_size, seed=cfg.seed,
                                                        with_attributes=True)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x = F.interpolate(x, size=cfg.image_size, mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    targets = torch.cat([torch.from_numpy(labels)[:, None], torch.from_numpy(attributes)], dim=1)
    return (x - mean) / std, targets.long()


def target_sizes() -> list[int]:
    from peft_bench.data.synthetic import STILL_ATTRIBUTE_BINS, STILL_CLASSES

    return [len(STILL_CLASSES), *STILL_ATTRIBUTE_BINS]


def pretrain(cfg: TinyConfig) -> dict[str, torch.Tensor]:
    """Supervised pre-training on still images; returns the vision tower's state dict.

    The targets are the shape and generic attributes (hue, size, position), predicted both from the
    [CLS] token and from the mean of the patch tokens: a small ViT learns much faster from this dense
    signal than from the shape on [CLS] alone, and [CLS] still learns to summarise the image, which is
    what the methods' heads read.
    """
    torch.manual_seed(cfg.seed)
    visual = build_visual(cfg)
    # open_clip's names for the very tensors that train: ClipBackbone renames the attention projections.
    saved = visual.state_dict(keep_vars=True)
    backbone = ClipBackbone(visual, BackboneInfo("tiny", NO_WEIGHTS, cfg.width, cfg.depth, cfg.heads,
                                                 cfg.patch_size, cfg.image_size))
    images, targets = still_images(cfg)
    sizes = target_sizes()
    head = nn.Linear(cfg.width, sum(sizes))
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.pretrain_steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    for step in range(cfg.pretrain_steps):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        tokens = backbone(images[idx].unsqueeze(1))[:, 0]  # one-frame clips -> (B, L, D)
        loss = 0.0
        for pooled in (tokens[:, 0], tokens[:, 1:].mean(dim=1)):
            logits = head(backbone.final_norm(pooled)).split(sizes, dim=1)
            loss = loss + sum(F.cross_entropy(lg, targets[idx, i]) for i, lg in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.pretrain_steps - 1:
            log.info("tiny pre-training step %d/%d loss %.3f (%.0f s)", step + 1, cfg.pretrain_steps, loss.item(),
                     time.time() - start)
    return {name: tensor.detach() for name, tensor in saved.items()}


def weights_path(cfg: TinyConfig = TinyConfig()) -> Path:
    """The cached pre-trained weights, made on first use."""
    path = cache_dir() / f"tiny-{cfg.digest()}.safetensors"
    if path.is_file():
        return path
    from safetensors.torch import save_file

    log.warning("pre-training the tiny backbone on synthetic still images (once; cached at %s)", path)
    state = pretrain(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"config": json.dumps(asdict(cfg))})
    tmp.replace(path)  # atomic: a killed pre-training never leaves a half-written cache entry
    return path


def create_tiny(pretrained: str, cfg: TinyConfig = TinyConfig()) -> VideoBackbone:
    visual = build_visual(cfg)
    if pretrained != NO_WEIGHTS:
        path = weights_path(cfg) if pretrained == AUTO else Path(pretrained)
        load_into(visual, strip_prefix(load_state_dict(path), "visual."), str(path))
        pretrained = str(path)
    info = BackboneInfo("tiny", pretrained, cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.image_size)
    return ClipBackbone(visual, info)


def _register() -> None:
    from . import register_backbone

    register_backbone("tiny")(create_tiny)


_register()
