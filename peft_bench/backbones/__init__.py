"""Image backbones, created by name: ``create_backbone("clip_vitb16", pretrained="auto")``.

Each factory builds the model with its own library (open_clip, timm) and returns a
:class:`~peft_bench.backbones.base.VideoBackbone`. ``pretrained`` is ``"auto"`` (the local caches),
a path to a weights file, or ``"none"`` (random initialisation, on explicit request only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

from peft_bench.backbones.base import BackboneInfo, Features, FrameBlock, VideoBackbone, take_indices
from peft_bench.backbones.clip import ClipBackbone
from peft_bench.backbones.timm_vit import TimmBlockParts, TimmViTBackbone
from peft_bench.backbones.weights import (
    AUTO,
    NO_WEIGHTS,
    MissingWeightsError,
    find_in_hf_cache,
    load_into,
    load_state_dict,
    missing_weights,
    strip_prefix,
)
from peft_bench.errors import UserError

BackboneFactory = Callable[[str], VideoBackbone]
_BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def decorate(factory: BackboneFactory) -> BackboneFactory:
        _BACKBONES[name] = factory
        return factory

    return decorate


def available_backbones() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, pretrained: str | Path = AUTO) -> VideoBackbone:
    if name not in _BACKBONES:
        raise UserError(f"unknown backbone '{name}'; available: {', '.join(available_backbones())}")
    return _BACKBONES[name](str(pretrained))


# --- CLIP through open_clip ------------------------------------------------------------------------

# Names of the OpenAI weights as open_clip publishes them on the Hugging Face hub.
_CLIP_ARCHS = {"clip_vitb16": ("ViT-B-16", 224), "clip_vitl14": ("ViT-L-14", 224)}
_OPEN_CLIP_FILES = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def _open_clip_visual(arch: str):
    """Build only the vision tower (the text tower is never used) with OpenAI's QuickGELU."""
    # open_clip takes seconds to import: only the CLIP backbones need it, not tiny or the timm ones.
    import open_clip
    from open_clip.model import CLIPVisionCfg, _build_vision_tower  # (the same reason)

    cfg = open_clip.get_model_config(arch)
    return _build_vision_tower(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), quick_gelu=True)


def _find_openai_clip(name: str, arch: str) -> Path:
    import open_clip  # seconds to import: see _open_clip_visual

    cfg = open_clip.get_pretrained_cfg(arch, "openai") or {}
    repo = (cfg.get("hf_hub") or "").strip("/")
    looked = []
    if repo:
        found = find_in_hf_cache(repo, _OPEN_CLIP_FILES)
        if found:
            return found
        looked.append(f"Hugging Face cache, repo {repo}, files {', '.join(_OPEN_CLIP_FILES)}")
    legacy = Path.home() / ".cache" / "clip" / f"{arch}.pt"  # where OpenAI's `clip` package saves them
    if legacy.is_file():
        return legacy
    looked.append(str(legacy))
    raise missing_weights(name, looked, "an open_clip or OpenAI CLIP checkpoint")


def _make_clip(name: str):
    arch, input_size = _CLIP_ARCHS[name]

    def factory(pretrained: str) -> VideoBackbone:
        visual = _open_clip_visual(arch)
        if pretrained != NO_WEIGHTS:
            path = _find_openai_clip(name, arch) if pretrained == AUTO else Path(pretrained)
            state = strip_prefix(load_state_dict(path), "visual.")
            load_into(visual, state, str(path))
            pretrained = str(path)
        blocks = visual.transformer.resblocks
        info = BackboneInfo(
            name,
            pretrained,
            visual.class_embedding.shape[0],
            len(blocks),
            blocks[0].attn.num_heads,
            visual.conv1.kernel_size[0],
            input_size,
        )
        return ClipBackbone(visual, info)

    return factory


for _name in _CLIP_ARCHS:
    register_backbone(_name)(_make_clip(_name))


# --- ImageNet-21K ViT through timm -----------------------------------------------------------------

_TIMM_ARCHS = {"in21k_vitb16": "vit_base_patch16_224.augreg_in21k"}
_TIMM_FILES = ["model.safetensors", "pytorch_model.bin"]


def _make_timm(name: str):
    model_name = _TIMM_ARCHS[name]

    def factory(pretrained: str) -> VideoBackbone:
        import timm  # seconds to import: only the timm backbones need it
        from timm.models.vision_transformer import VisionTransformer  # (the same reason)

        vit = timm.create_model(model_name, pretrained=False, num_classes=0)
        assert isinstance(vit, VisionTransformer)  # what every architecture in _TIMM_ARCHS builds
        if pretrained != NO_WEIGHTS:
            if pretrained == AUTO:
                repo = f"timm/{model_name}"
                path = find_in_hf_cache(repo, _TIMM_FILES)
                if path is None:
                    raise missing_weights(
                        name, [f"Hugging Face cache, repo {repo}"], "a timm checkpoint, .safetensors/.bin/.npz"
                    )
            else:
                path = Path(pretrained)
            if path.suffix == ".npz":  # the original big_vision/augreg release
                if not path.is_file():
                    raise MissingWeightsError(f"weights file not found: {path}")
                vit.load_pretrained(str(path))
            else:
                load_into(vit, load_state_dict(path), str(path), ignore=("head.",))
            pretrained = str(path)
        info = BackboneInfo(
            name,
            pretrained,
            vit.embed_dim,
            len(vit.blocks),
            cast(TimmBlockParts, vit.blocks[0]).attn.num_heads,
            vit.patch_embed.patch_size[0],
            vit.patch_embed.img_size[0],
        )
        return TimmViTBackbone(vit, info)

    return factory


for _name in _TIMM_ARCHS:
    register_backbone(_name)(_make_timm(_name))

# --- tiny: the embedded default --------------------------------------------------------------------
from peft_bench.backbones import tiny  # noqa: E402, F401  (imported to register "tiny", after the registry exists)

__all__ = [
    "AUTO",
    "NO_WEIGHTS",
    "BackboneInfo",
    "Features",
    "FrameBlock",
    "MissingWeightsError",
    "VideoBackbone",
    "available_backbones",
    "create_backbone",
    "register_backbone",
    "take_indices",
]
