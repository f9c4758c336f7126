"""LoRA (Hu et al., ICLR 2022) on the frozen frame-wise image ViT's attention projections, through
Hugging Face ``peft``: a later generic PEFT baseline (V-PETL Bench runs it on video).

Each targeted ``nn.Linear`` W gets a trainable low-rank update, ``W x + (alpha / r) B A x`` with A (r x in)
and B (out x r); B starts at zero, so the model starts as the frozen backbone. The block's projections
are ``nn.Linear`` modules called as modules on every backbone (``FrameBlock.linear_layers``: ``qkv``,
``proj``, ``fc1``, ``fc2``), so peft's own ``lora.Linear`` wraps them and takes effect; targets are
passed to peft by their full module names, so nothing else that happens to be called ``proj`` is hit.
Frames are averaged before the head: nothing models time.

The fused ``qkv`` projection means one A is shared by q, k and v (the LoRA paper adapts W_q and W_v as
separate matrices); its B covers all three. After training the update folds into W
(``merge_lora``: peft's ``merge`` then its base layer back in place), leaving the image model's
architecture, parameter count and FLOPs. Weight decay: A and B decay like any weight matrix.

Parameters, ViT-B/16 (D = 768), rank 8, on qkv and proj of every block: qkv r D + 3D r = 24,576,
proj r D + D r = 12,288; 12 x 36,864 = 442,368 + head 307,600 = 749,968 = 0.75M. No authors' figure
to compare with: LoRA was published for language models.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_bench.backbones import VideoBackbone
from peft_bench.method_api.layers import ModelT, resolve_layers
from peft_bench.method_api.model import VideoClassifier
from peft_bench.method_api.registry import LATER_METHODS, RunContext, register_method

LAYER_NAMES = ("qkv", "proj", "fc1", "fc2")


@dataclass
class LoRAConfig:
    rank: int = 8  # r
    alpha: float = 8.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the input of A, in training
    targets: tuple[str, ...] = ("qkv", "proj")  # which of each block's linear layers: qkv, proj, fc1, fc2
    layers: tuple[int, ...] | None = None  # which blocks (None = all)

    def __post_init__(self):
        bad = set(self.targets) - set(LAYER_NAMES)
        if bad or not self.targets:
            raise ValueError(f"targets must be drawn from {', '.join(LAYER_NAMES)}, got {self.targets}")
        if self.rank < 1:
            raise ValueError(f"rank must be positive, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


def target_module_names(backbone: VideoBackbone, layers: list[int], targets: tuple[str, ...]) -> list[str]:
    """Full dotted names, within ``backbone``, of the chosen blocks' chosen linear layers."""
    names = {id(module): name for name, module in backbone.named_modules()}
    return [names[id(backbone.blocks[i].linear_layers()[target])] for i in layers for target in targets]


def merge_lora(model: ModelT) -> ModelT:
    """Fold every LoRA update into its base layer and put the base layer back in the wrapper's place."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft loads with a LoRA model only: see build()

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


@register_method("lora", config=LoRAConfig, group=LATER_METHODS, architecture="SA", models_time=False, merge=merge_lora)
def build(backbone: VideoBackbone, context: RunContext, cfg: LoRAConfig) -> VideoClassifier:
    # peft (and the transformers it imports) loads when a LoRA model is built, not whenever the registry
    # imports every method.
    from peft import LoraConfig, inject_adapter_in_model

    names = target_module_names(backbone, resolve_layers(cfg.layers, len(backbone.blocks)), cfg.targets)
    peft_config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int; it only divides it by r
        lora_dropout=cfg.dropout,
        target_modules=names,
        bias="none",
    )
    inject_adapter_in_model(peft_config, backbone)  # only the LoRA matrices train inside the backbone
    return VideoClassifier(backbone, context)
