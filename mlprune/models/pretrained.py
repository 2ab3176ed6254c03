"""Pretrained roots: a network trained elsewhere, read from a file the root option ``weights`` names.

A ``.safetensors`` file, or a PyTorch ``.pth`` / ``.pt`` state dict (torchvision's) read with
``torch.load(weights_only=True)``: tensors and plain containers only, nothing else unpickled. Its
tensors must be exactly the model's state_dict (names and shapes): the first that is not is one line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SpecError

SUFFIXES = (".safetensors", ".pth", ".pt")


def _shapes_in(path: Path) -> dict[str, tuple]:
    """{name: shape} of the tensors in `path` (safetensors: read from its header alone)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 - safe_open
    return {name: tuple(t.shape) for name, t in read_weights(path).items()}


def read_weights(path) -> dict[str, torch.Tensor]:
    """The tensors of a pretrained file (float32 where floating, CPU, contiguous)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            found = load_file(str(path), device="cpu")
        else:
            found = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged file or one holding other objects: one line
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise SpecError(f"pretrained weights {str(path)!r} cannot be read: {type(error).__name__}: {message}") from None
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in found.items()
    ):
        raise SpecError(
            f"pretrained weights {str(path)!r} hold a {type(found).__name__}, not a state dict (tensors by name)"
        )
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in found.items()}


def check_fits(path, model: torch.nn.Module) -> None:
    """A one-line SpecError naming the first tensor of `model`'s state_dict the file does not match."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = _shapes_in(Path(path))
    for name, shape in expected.items():
        if name not in found:
            raise SpecError(f"pretrained weights {str(path)!r} have no tensor {name!r} (shape {shape}) of the model")
        if found[name] != shape:
            raise SpecError(
                f"pretrained weights {str(path)!r}: tensor {name!r} has shape {found[name]}, the model's is {shape}"
            )
    extra = sorted(set(found) - set(expected))
    if extra:
        raise SpecError(
            f"pretrained weights {str(path)!r} have a tensor {extra[0]!r} the model does not ({len(extra)} such)"
        )


def load_into(path, model: torch.nn.Module) -> torch.nn.Module:
    """`model` with the file's weights (checked first)."""
    check_fits(path, model)
    state = model.state_dict()
    tensors = read_weights(path)
    model.load_state_dict({name: tensors[name].to(state[name].dtype) for name in state})
    return model
