"""The clear errors and the contracts the method API's and the backbones' types brought with them."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from peft_bench.backbones import NO_WEIGHTS, FrameBlock, VideoBackbone, create_backbone
from peft_bench.backbones.base import FrameBlocks, rgb
from peft_bench.errors import UserError
from peft_bench.method_api.layers import FoldsIntoLinear, LinearAdapter, Mergeable, WrappedBlock
from peft_bench.method_api.optim import no_weight_decay_patterns
from peft_bench.method_api.registry import load_plugin


def test_a_plugin_that_is_not_python_source_is_a_user_error(tmp_path):
    plugin = tmp_path / "my_method.txt"
    plugin.write_text("print('not importable as a module')\n")
    with pytest.raises(UserError, match=r"a plugin is a Python source file"):
        load_plugin(plugin)


def test_a_block_missing_a_stage_cannot_be_made():
    class HalfBlock(FrameBlock):  # norm1 and the rest are left out
        def feed_forward(self, x: Tensor) -> Tensor:
            return x

    with pytest.raises(TypeError, match="abstract"):
        HalfBlock()


def test_a_backbone_missing_its_embedding_cannot_be_made():
    class NoEmbedding(VideoBackbone):
        def pre_norm(self, x: Tensor) -> Tensor:
            return x

    with pytest.raises(TypeError, match="embed_patches"):
        NoEmbedding()


def test_blocks_stay_frame_blocks_when_sliced_and_iterated():
    backbone = create_backbone("tiny", NO_WEIGHTS)
    assert isinstance(backbone.blocks, FrameBlocks) and isinstance(backbone.blocks, nn.ModuleList)
    first_two = backbone.blocks[:2]
    assert isinstance(first_two, FrameBlocks) and len(first_two) == 2
    assert all(isinstance(block, FrameBlock) for block in first_two)


def test_rgb_refuses_anything_but_three_channels():
    assert rgb([0.5, 0.25, 0.125]) == (0.5, 0.25, 0.125)
    with pytest.raises(ValueError, match="unpack"):
        rgb([0.5, 0.5])


def test_the_declared_hooks_are_found_by_their_protocols():
    adapter = LinearAdapter(8, 2)
    assert isinstance(adapter, FoldsIntoLinear) and not isinstance(nn.Linear(2, 2), FoldsIntoLinear)
    backbone = create_backbone("tiny", NO_WEIGHTS)
    assert isinstance(WrappedBlock(backbone.blocks[0]), nn.Module)
    assert not isinstance(backbone.blocks[0], Mergeable)
    # The backbone's own declaration, prefixed with its path in the model.
    model = nn.ModuleDict({"backbone": backbone})
    assert {"backbone.positional_embedding", "backbone.class_embedding"} <= no_weight_decay_patterns(model)


def test_evl_cross_attention_without_q_and_k_says_what_to_build():
    from peft_bench.methods.evl import EVLConfig, LocalTemporal

    layer = LocalTemporal(16, 4, (2, 2), EVLConfig(num_frames=4))
    with pytest.raises(ValueError, match="qk=True"):
        layer(torch.zeros(1, 4, 5, 16), None)
