"""Clear errors where a value the types now name was used unchecked: the feature cache's datasets and the FLOP
handlers' tensor shapes."""

from __future__ import annotations

import pytest
import torch

from peft_bench.backbones import create_backbone
from peft_bench.data.build import build_dataset
from peft_bench.measure.accounting import attention_flops, sdpa_flop_jit
from peft_bench.method_api.checks import build_method
from peft_bench.train import feature_cache


def appearance_clips():
    backbone = create_backbone("tiny", "none")
    return build_dataset(
        "synthetic-appearance",
        "val",
        root=None,
        input_size=backbone.input_size,
        mean=backbone.mean,
        std=backbone.std,
        num_frames=4,
        seed=0,
    )


def test_the_feature_cache_names_a_dataset_it_cannot_fingerprint():
    # Before, an AttributeError on `.samples` of whatever came in.
    with pytest.raises(TypeError, match="VideoClipDataset, not list"):
        feature_cache.dataset_fingerprint([1, 2, 3])
    subset = torch.utils.data.Subset(appearance_clips(), range(2))  # a Subset is looked through
    assert feature_cache.dataset_fingerprint(subset)["count"] > 2


def test_an_empty_dataset_gives_the_feature_cache_a_clear_error_and_no_leftover_folder(tmp_path):
    # Before, an AttributeError on None (the token file is made at the first batch, and there was none).
    torch.manual_seed(0)
    model = build_method("linear_probe", create_backbone("tiny", "none"), 5)
    empty = torch.utils.data.Subset(appearance_clips(), [])
    with pytest.raises(ValueError, match="no clips to extract"):
        feature_cache.get_or_build(tmp_path, model, empty, None, "float32", torch.device("cpu"), 4, 0)
    assert list(tmp_path.iterdir()) == []


class _NotATensor:
    """What fvcore's get_shape sees for a traced value that is not a tensor of known shape."""

    def isCompleteTensor(self) -> bool:  # torch._C.Value's name
        return False


def test_a_flop_handler_names_an_input_without_a_shape():
    # Before, a TypeError from unpacking None inside attention_flops.
    with pytest.raises(ValueError, match="no known tensor shape"):
        sdpa_flop_jit([_NotATensor(), _NotATensor(), _NotATensor()], [])


def test_a_flop_handler_still_counts_tensors():
    q, k = [2, 3, 10, 8], [2, 3, 7, 8]
    inputs = [_Value(q), _Value(k), _Value(k)]
    assert sdpa_flop_jit(inputs, [])["attention"] == attention_flops(q, k, k) == 2 * 3 * 10 * 7 * 16


class _Value:
    """A traced tensor value of a known shape, as fvcore reads one."""

    def __init__(self, shape: list[int]) -> None:
        self.shape = shape

    def isCompleteTensor(self) -> bool:  # torch._C.Value's name
        return True

    def type(self) -> _Value:
        return self

    def sizes(self) -> list[int]:
        return self.shape
