"""Parameters and GFLOPs of every registered method, counted the way the ST-Adapter paper counts them.

``account("st_adapter", "clip_vitb16", num_classes=400, preset="k400")`` builds the method on a backbone
with random weights (no weights, no GPU), traces it once on a (1, frames, 3, S, S) clip with fvcore's
``FlopCountAnalysis`` and returns an :class:`Account`.

Conventions
-----------
* One multiply-add is one FLOP (fvcore's and the paper's convention).
* ``convention="all"`` (the default, and what the table prints): matrix products (``linear``, ``matmul``,
  ``bmm``, ``addmm``, ``baddbmm``, ``einsum``), both matrix products inside every attention kernel,
  convolutions (patch embedding and ST-Adapter's depthwise Conv3d) and fvcore's estimates for norms,
  upsampling and adaptive pooling. This is the reference's "fvcore, all ops" column (ViT-B/16 422).
* ``convention="matmul"``: matrix products and attention only; convolutions and norms are left out on
  purpose. This is the reference's "linear + matmul only" figure (ViT-B/16 418.74, the paper's 419).
* In both, elementwise arithmetic, activations, softmax, reductions and data movement cost nothing; they
  are named in :data:`FREE_OPS` so that ignoring them is a decision, not an accident. Any other op the
  trace meets is reported in ``Account.uncounted_ops`` (op name -> occurrences), never dropped in silence.

fvcore out of the box has no handler for ``scaled_dot_product_attention`` (the op every attention in the
project goes through), its flash / efficient / math kernels, or ``nn.MultiheadAttention``'s fused path
(``_native_multi_head_attention``); the handlers below count them. fvcore's own convolution handler
multiplies by the weight's shape (C_out, C_in / groups, k...), so it already respects ``groups``: a
depthwise Conv3d costs C_out * k_t * k_h * k_w per output position (``tests/test_accounting.py`` checks it).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peft_bench.data.specs import available_datasets, get_dataset
from peft_bench.method_api.registry import RunContext, available_methods, get_method
from peft_bench.reference import ordered_methods

if TYPE_CHECKING:  # torch and fvcore are imported where used: `peft-bench --help` should not wait for them
    import torch
    from torch import nn

    from peft_bench.method_api.model import VideoClassifier

Convention = Literal["all", "matmul"]
CONVENTIONS: tuple[str, ...] = ("all", "matmul")
Handle = Callable[[list, list], Any]

# --- op handlers fvcore lacks -------------------------------------------------------------------------


def _fvcore(module: str = "fvcore.nn"):
    """An fvcore module, imported without fvcore's FutureWarning about ``torch.jit.script`` (its focal loss)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module(module)


def _shape(value) -> list[int]:
    """The shape of a traced op's tensor input or output (the handlers below read only those)."""
    shape = _fvcore("fvcore.nn.jit_handles").get_shape(value)
    if shape is None:  # fvcore's answer for a value that is not a tensor of known shape
        raise ValueError(f"cannot count FLOPs: the traced value {value} has no known tensor shape")
    return shape


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def attention_flops(q_shape: list[int], k_shape: list[int], v_shape: list[int]) -> int:
    """``softmax(q k^T) v`` on (..., L, E) queries, (..., S, E) keys and (..., S, Ev) values.

    Two matrix products: L*S*E for the scores and L*S*Ev for the weighted values, per batch-and-head.
    The query's leading dims are the true batch-and-head count (grouped-query attention broadcasts k/v).
    Causal masking is not discounted: the math kernel computes the full product, as fvcore counts matmuls.
    """
    *batch, length, head_dim = q_shape
    keys, value_dim = k_shape[-2], v_shape[-1]
    return _numel(batch) * length * keys * (head_dim + value_dim)


def sdpa_flop_jit(inputs: list, outputs: list) -> Counter:
    """``aten::scaled_dot_product_attention`` and its kernels: q, k, v are always the first three inputs."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return Counter({"attention": attention_flops(q, k, v)})


def native_mha_flop_jit(inputs: list, outputs: list) -> Counter:
    """``aten::_native_multi_head_attention`` (``nn.MultiheadAttention``'s fused inference path).

    Inputs: query (B, L, E), key (B, S, E), value (B, S, E), embed_dim, num_heads, qkv weight, qkv bias,
    out-projection weight, ... The op does the q/k/v projections, attention and output projection itself.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, length, dim = q
    keys = k[-2]
    projections = _numel(batch) * (length * dim * dim + 2 * keys * dim * dim + length * dim * dim)
    # Split into heads: (B, h, L, E/h) per head sums to the same L*S*E as one (B, L, E) product.
    return Counter({"linear": projections, "attention": attention_flops(q, k, v)})


def matmul_flop_jit(inputs: list, outputs: list) -> int:
    """``aten::matmul`` / ``aten::mm`` with broadcasting and 1-D operands: output elements * inner dim.

    fvcore's handler assumes the first operand carries every batch dim (wrong for (L, E) @ (B, E, S)).
    """
    a_shape, out_shape = _shape(inputs[0]), _shape(outputs[0])
    return _numel(out_shape) * a_shape[-1]


def baddbmm_flop_jit(inputs: list, outputs: list) -> int:
    """``aten::baddbmm(bias, batch1, batch2, ...)``: the batched product (the bias add is free)."""
    return _numel(_shape(outputs[0])) * _shape(inputs[1])[-1]


def _conv_flops(inputs: list, outputs: list, transposed: bool) -> Counter:
    x, w, out = _shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0])
    return Counter({"conv": _fvcore("fvcore.nn.jit_handles").conv_flop_count(x, w, out, transposed=transposed)})


def convolution_flop_jit(inputs: list, outputs: list) -> Counter:
    """``aten::convolution(input, weight, bias, stride, padding, dilation, transposed, ...)``."""
    return _conv_flops(inputs, outputs, transposed=bool(inputs[6].toIValue()))


def conv_nd_flop_jit(inputs: list, outputs: list) -> Counter:
    """``aten::conv1d/2d/3d``: the weight (C_out, C_in / groups, k...) already accounts for groups."""
    return _conv_flops(inputs, outputs, transposed=False)


def conv_transpose_nd_flop_jit(inputs: list, outputs: list) -> Counter:
    return _conv_flops(inputs, outputs, transposed=True)


# The attention kernels a trace may show instead of (or besides) the public op.
ATTENTION_OPS: tuple[str, ...] = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_fused_attention_overrideable",
)


def matrix_product_handles() -> dict[str, Handle]:
    """What both conventions count: every matrix product, attention's included."""
    fvcore_handles = _fvcore("fvcore.nn.jit_handles")
    handles: dict[str, Handle] = {
        "aten::linear": fvcore_handles.linear_flop_jit,
        "aten::addmm": fvcore_handles.addmm_flop_jit,
        "aten::bmm": fvcore_handles.bmm_flop_jit,
        "aten::baddbmm": baddbmm_flop_jit,
        "aten::matmul": matmul_flop_jit,
        "aten::mm": matmul_flop_jit,
        "aten::einsum": fvcore_handles.einsum_flop_jit,
        "aten::_native_multi_head_attention": native_mha_flop_jit,
    }
    handles.update(dict.fromkeys(ATTENTION_OPS, sdpa_flop_jit))
    return handles


def other_handles() -> dict[str, Handle]:
    """What only ``convention="all"`` counts: convolutions, and fvcore's estimates for norms and resampling."""
    defaults = _fvcore("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS  # conv, norms, upsampling, adaptive pooling
    handles = {op: h for op, h in defaults.items() if op not in matrix_product_handles()}
    # Resampling, in fvcore's units (the 2-D nearest and bilinear cases are its own): per output element,
    # one per neighbour interpolated. ``F.interpolate`` resizes position embeddings for other clip lengths.
    per_output = _fvcore("fvcore.nn.jit_handles").elementwise_flop_counter
    handles.update(
        {
            "aten::upsample_nearest1d": per_output(0, 1),
            "aten::upsample_nearest3d": per_output(0, 1),
            "aten::upsample_linear1d": per_output(0, 2),
            "aten::upsample_bicubic2d": per_output(0, 16),
            "aten::upsample_trilinear3d": per_output(0, 8),
            "aten::adaptive_avg_pool1d": per_output(1, 0),
            "aten::adaptive_avg_pool3d": per_output(1, 0),
        }
    )
    handles.update(
        {
            "aten::convolution": convolution_flop_jit,
            **{f"aten::conv{n}d": conv_nd_flop_jit for n in (1, 2, 3)},
            **{f"aten::conv_transpose{n}d": conv_transpose_nd_flop_jit for n in (1, 2, 3)},
        }
    )
    return handles


# Ops that cost nothing meaningful next to the matrix products: elementwise arithmetic, activations,
# softmax, reductions and data movement (fvcore already ignores reshapes, slicing, cat and the like).
FREE_OPS: frozenset[str] = frozenset(
    f"aten::{name}"
    for name in (
        "add",
        "add_",
        "sub",
        "sub_",
        "rsub",
        "mul",
        "mul_",
        "div",
        "div_",
        "neg",
        "reciprocal",
        "pow",
        "sqrt",
        "rsqrt",
        "exp",
        "log",
        "abs",
        "sign",
        "lerp",
        "addcmul",
        "sigmoid",
        "sigmoid_",
        "tanh",
        "gelu",
        "gelu_",
        "silu",
        "silu_",
        "hardswish",
        "leaky_relu",
        "elu",
        "softplus",
        "softmax",
        "log_softmax",
        "_softmax",
        "mean",
        "sum",
        "amax",
        "amin",
        "min",
        "std",
        "var",
        "norm",
        "linalg_vector_norm",
        "cumsum",
        "argmax",
        "topk",
        "sort",
        "lt",
        "le",
        "ne",
        "logical_and",
        "logical_or",
        "logical_not",
        "where",
        "masked_fill_",
        "clone",
        "repeat",
        "repeat_interleave",
        "expand_as",
        "view_as",
        "flip",
        "tile",
        "pad",
        "index_select",
        "scatter",
        "scatter_add",
        "new_ones",
        "ones_like",
        "empty_like",
        "rand",
        "randn",
        "rand_like",
        "bernoulli_",
        "dropout_",
        "feature_dropout",
        "alpha_dropout",
        "fill_",
        "zero_",
        "detach_",
        "item",
        "movedim",
        "moveaxis",
        "swapaxes",
        "unflatten",
        "mT",
        "numpy_T",
        "resolve_conj",
        "resolve_neg",
        "lift_fresh",
        "scalar_tensor",
        "tensor",
        "as_strided",
        "_unsafe_view",
        "alias",
        "linspace",
    )
)


def handles_for(convention: Convention) -> tuple[dict[str, Handle], set[str]]:
    """(counted op -> handle, deliberately ignored ops) for a convention."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention '{convention}'; choose from {', '.join(CONVENTIONS)}")
    counted, others = matrix_product_handles(), other_handles()
    if convention == "all":
        return {**counted, **others}, set(FREE_OPS)
    return counted, set(FREE_OPS) | set(others)  # "matmul": convolutions and norms left out on purpose


# --- counting -------------------------------------------------------------------------------------------


@dataclass
class FlopCount:
    total: int
    by_operator: dict[str, int]
    uncounted_ops: dict[str, int]  # op name -> occurrences in the trace, for ops no handler counted
    seconds: float = 0.0


def flop_analysis(model: nn.Module, inputs: tuple[torch.Tensor, ...], convention: Convention = "all"):
    """A ``FlopCountAnalysis`` with this project's handlers and ignore list (traced lazily, once)."""
    counted, ignored = handles_for(convention)
    analysis = _fvcore().FlopCountAnalysis(model, inputs).clear_op_handles()
    analysis.set_op_handle(**counted)
    analysis.set_op_handle(**dict.fromkeys(ignored))
    # We report uncounted ops ourselves; fvcore's per-trace warnings would only repeat them.
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...], convention: Convention = "all") -> FlopCount:
    """Trace ``model(*inputs)`` once and count. The model is put in eval mode (dropout off, fused paths on)."""
    import torch  # heavy: imported where used (see the TYPE_CHECKING note at the top)

    model.eval()
    start = time.perf_counter()
    analysis = flop_analysis(model, inputs, convention)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = int(analysis.total())  # the trace happens here; the calls below reuse it
    return FlopCount(
        total,
        {k: int(v) for k, v in analysis.by_operator().items()},
        dict(analysis.unsupported_ops()),
        time.perf_counter() - start,
    )


def count_video_flops(model: nn.Module, frames: int, input_size: int, convention: Convention = "all") -> FlopCount:
    """FLOPs of one view: a (1, frames, 3, S, S) clip. Converts ``model`` to the dtype it traces in.

    The trace runs the model once, so its speed is the model's: bf16 matrix products run about 2.5x faster
    than fp32 on AVX-512 CPUs, and counts depend on shapes only. fp32 if an op refuses bf16.
    """
    import torch  # heavy: imported where used (see the TYPE_CHECKING note at the top)

    def count_in(dtype: torch.dtype) -> FlopCount:
        clip = torch.zeros(1, frames, 3, input_size, input_size, dtype=dtype)
        return count_flops(model.to(dtype), (clip,), convention)

    try:
        return count_in(torch.bfloat16)
    except RuntimeError:  # an op with no bf16 kernel on CPU
        return count_in(torch.float32)


# --- one method on one backbone -------------------------------------------------------------------------


@dataclass
class Account:
    method: str
    backbone: str
    num_classes: int
    frames: int
    views: int
    trainable_params: int
    total_params: int
    gflops_per_view: float
    gflops_total: float  # all views together, as the paper's tables print it
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    convention: str = "all"
    input_size: int = 224
    preset: str | None = None


def build_for_counting(
    method: str, backbone: str, num_classes: int, preset: str | None, frames: int = 8
) -> tuple[VideoClassifier, str | None]:
    """The method on a frozen backbone with random weights, as the runner builds it (for ``frames``-frame
    clips), and the preset applied (None when the method has no such preset: a linear probe is the same
    on every dataset)."""
    # heavy (torch, open_clip, timm): when counting
    from peft_bench.backbones import NO_WEIGHTS, create_backbone

    spec = get_method(method)
    applied = preset if preset in spec.presets else None
    context = RunContext(num_classes=num_classes, num_frames=frames)
    return spec.create(create_backbone(backbone, NO_WEIGHTS), context, spec.make_config(applied)), applied


def account(
    method: str,
    backbone: str,
    *,
    num_classes: int,
    frames: int = 8,
    views: int = 3,
    preset: str | None = None,
    input_size: int | None = None,
    convention: Convention = "all",
) -> Account:
    """Parameters and GFLOPs of ``method`` on ``backbone`` (random weights; 1 multiply-add = 1 FLOP)."""
    # heavy (torch): when counting
    from peft_bench.method_api.model import count_parameters

    model, applied = build_for_counting(method, backbone, num_classes, preset, frames)
    params = count_parameters(model)
    size = input_size or model.backbone.input_size
    per_view = count_video_flops(model, frames, size, convention)
    gflops = per_view.total / 1e9
    return Account(
        method,
        backbone,
        num_classes,
        frames,
        views,
        params.trainable,
        params.total,
        gflops,
        gflops * views,
        per_view.uncounted_ops,
        convention,
        size,
        applied,
    )


# --- tables ---------------------------------------------------------------------------------------------

COLUMNS = (
    "method",
    "backbone",
    "num_classes",
    "frames",
    "views",
    "trainable_params",
    "total_params",
    "gflops_per_view",
    "gflops_total",
    "uncounted_ops",
)


CONVENTION_NOTES = {
    "all": "matrix products, attention, convolutions and norms counted, elementwise ops free",
    "matmul": "only linear layers and matrix products (attention included) counted",
}


def _uncounted_text(ops: dict[str, int]) -> str:
    return "; ".join(f"{op} x{n}" for op, n in sorted(ops.items())) or "-"


def _markdown(accounts: list[Account]) -> str:
    header = (
        "| method | preset | backbone | classes | frames | views | trainable (M) | total (M) | GFLOPs/view "
        "| GFLOPs, all views | uncounted ops |"
    )
    lines = [header, "|" + " --- |" * 11]
    for a in accounts:
        lines.append(
            f"| {a.method} | {a.preset or '-'} | {a.backbone} | {a.num_classes} | {a.frames} | {a.views} | "
            f"{a.trainable_params / 1e6:.2f} | {a.total_params / 1e6:.2f} | {a.gflops_per_view:.2f} | "
            f"{a.gflops_total:.2f} | {_uncounted_text(a.uncounted_ops)} |"
        )
    notes = "; ".join(f"'{c}': {CONVENTION_NOTES[c]}" for c in sorted({a.convention for a in accounts}))
    lines += [
        "",
        (
            f"GFLOPs: fvcore trace, 1 multiply-add = 1 FLOP, convention {notes}. Random weights "
            "(counts depend on shapes only); ops listed as uncounted had no FLOP handler."
        ),
    ]
    return "\n".join(lines)


def _csv(accounts: list[Account]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((*COLUMNS, "convention", "input_size", "preset"))
    for a in accounts:
        row = asdict(a)
        row["uncounted_ops"] = _uncounted_text(a.uncounted_ops)
        writer.writerow([row[c] for c in (*COLUMNS, "convention", "input_size", "preset")])
    return out.getvalue().rstrip("\n")


def render(accounts: list[Account], fmt: str = "markdown") -> str:
    if fmt == "markdown":
        return _markdown(accounts)
    if fmt == "csv":
        return _csv(accounts)
    if fmt == "json":
        return json.dumps([asdict(a) for a in accounts], indent=2)
    raise ValueError(f"unknown format '{fmt}'; choose markdown, csv or json")


# --- command --------------------------------------------------------------------------------------------


def counted_datasets() -> list[str]:
    """The registered datasets with a fixed number of classes (a list file's depends on the file)."""
    return [name for name in available_datasets() if get_dataset(name).num_classes is not None]


def dataset_setting(dataset: str) -> tuple[int, str | None]:
    """(number of classes, method preset) for a dataset name; the method preset follows the dataset as in a run."""
    if dataset not in counted_datasets():
        raise ValueError(f"unknown dataset '{dataset}'; available: {', '.join(counted_datasets())}")
    spec = get_dataset(dataset)
    assert spec.num_classes is not None  # counted_datasets() holds only datasets with a fixed class count
    return spec.num_classes, spec.method_preset


def parse_views(text: str) -> int:
    """'CROPSxCLIPS' (e.g. '3x1') -> crops * clips; a plain number is taken as is."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"views must look like CROPSxCLIPS (e.g. 3x1) or a number, got '{text}'") from None
    if len(numbers) > 2 or any(n < 1 for n in numbers):
        raise ValueError(f"views must look like CROPSxCLIPS with positive numbers, got '{text}'")
    return math.prod(numbers)


def add_account_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("account", help="trainable parameters and GFLOPs of methods (random weights, CPU)")
    p.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    p.add_argument("--backbone", default="clip_vitb16", help="clip_vitb16 (default), clip_vitl14, in21k_vitb16, tiny")
    p.add_argument(
        "--dataset",
        default="k400",
        choices=sorted(counted_datasets()),
        help="decides the number of classes and the method preset (default k400)",
    )
    p.add_argument("--preset", help="method preset (default: the dataset's)")
    p.add_argument("--frames", type=int, default=8, help="frames per view (default 8)")
    p.add_argument("--views", default="3x1", help="test views as CROPSxCLIPS (default 3x1)")
    p.add_argument("--input-size", type=int, help="frame side in pixels (default: the backbone's)")
    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default="all",
        help="'all': matmuls, attention, convs, norms (default); 'matmul': linear + matmul only",
    )
    p.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help="a method file of your own to register (repeatable)",
    )
    return p


def _method_names(selection: str) -> list[str]:
    if selection == "all":
        methods = available_methods()
        return ordered_methods(methods, later={m for m in methods if get_method(m).later})
    return [m.strip() for m in selection.split(",") if m.strip()]


def cmd_account(args) -> int:
    num_classes, dataset_preset = dataset_setting(args.dataset)
    views = parse_views(args.views)
    accounts, failed = [], []
    for method in _method_names(args.methods):
        try:
            accounts.append(
                account(
                    method,
                    args.backbone,
                    num_classes=num_classes,
                    frames=args.frames,
                    views=views,
                    preset=args.preset or dataset_preset,
                    input_size=args.input_size,
                    convention=args.convention,
                )
            )
        except Exception as err:  # noqa: BLE001  -- one method that cannot be built or traced must not cost the others their rows
            failed.append((method, err))
            print(f"peft-bench account: {method}: {type(err).__name__}: {err}", file=sys.stderr)
    text = render(accounts, args.format)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    uncounted = sorted({op for a in accounts for op in a.uncounted_ops})
    if uncounted:
        print(f"peft-bench account: ops with no FLOP handler (not counted): {', '.join(uncounted)}", file=sys.stderr)
    return 1 if failed else 0
