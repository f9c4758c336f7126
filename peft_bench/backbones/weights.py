"""Finding and loading pre-trained weights, offline, and refusing to go on without them.

Weights come from an explicit file (``--pretrained PATH``) or from the local Hugging Face cache, exactly
where open_clip and timm would have put them on a machine with internet. Nothing is downloaded. When
weights are wanted and not found, :class:`MissingWeightsError` says where we looked and how to provide
them: a run never falls back to random weights unless asked with ``--pretrained none``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from peft_bench.errors import UserError

NO_WEIGHTS = "none"  # the explicit request for random initialisation
AUTO = "auto"  # look in the local caches


class MissingWeightsError(FileNotFoundError):
    pass


def hf_cache_dir() -> Path:
    from huggingface_hub import constants  # heavy-ish, and only finding weights in its cache needs it

    return Path(constants.HF_HUB_CACHE)


def find_in_hf_cache(repo_id: str, filenames: list[str]) -> Path | None:
    """The first of ``filenames`` present in the local Hugging Face cache for ``repo_id``, or None."""
    from huggingface_hub import try_to_load_from_cache  # as above

    for filename in filenames:
        found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
        if isinstance(found, str):
            return Path(found)
    return None


def missing_weights(backbone: str, looked_in: list[str], how_to: str) -> MissingWeightsError:
    where = "\n".join(f"  - {place}" for place in looked_in)
    return MissingWeightsError(
        f"pre-trained weights for backbone '{backbone}' were not found. Looked in:\n{where}\n"
        f"Provide them with --pretrained PATH ({how_to}), or put them in the Hugging Face cache "
        f"({hf_cache_dir()}) on a machine with internet.\n"
        f"To train from random weights on purpose, pass --pretrained none."
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing pickled code (safetensors, or torch.load weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # noqa: TID251  (tensors only, no code)
    except RuntimeError:
        # OpenAI's original CLIP files are TorchScript archives, not pickles.
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the entries under ``prefix`` (without it), or the whole dict when none has it."""
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return picked or state


def load_into(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, ignore: tuple[str, ...] = ()
) -> None:
    """Load strictly except for keys starting with ``ignore``; a missing key is an error, never a silent gap."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(ignore)]
    if missing:
        raise UserError(f"{source} does not fit this backbone: {len(missing)} missing keys, e.g. {missing[:5]}")
