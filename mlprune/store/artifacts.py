"""A state's files: safetensors tensors and a JSON spec, their hashes, and where they are.

Nothing is pickled: safetensors holds tensors only, state.json is JSON, so
loading a state cannot run code. Every file's SHA-256 is recorded when the state
is finished (the tensor files' in state.json, all three in tags) and checked on
every read (`verify_files`): a flipped byte, a truncated or swapped file is an
`IntegrityError`, never a silently different state.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import SpecError
from ..names import MASKS_FILE, STATE_FILE, TAG_HASH_PREFIX, WEIGHTS_FILE


class IntegrityError(SpecError):
    """A stored state does not match its recorded hashes or key: it must not be used."""


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def tensors_bytes(tensors: dict) -> bytes:
    """Safetensors bytes of CPU, contiguous copies of the tensors (a GPU state saves like any other)."""
    from safetensors.torch import save

    return save({name: t.detach().cpu().contiguous() for name, t in tensors.items()})


def tensors_from(content: bytes, *, run_id: str, name: str) -> dict:
    from safetensors.torch import load

    try:
        return load(content)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: one line
        raise IntegrityError(f"state {run_id}: {name} is not a readable safetensors file "
                             f"({' '.join(str(error).split())[:120]})") from None


def state_files(spec: dict, masks: dict | None, weights: dict | None,
                extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The files of a state: masks, weights (unless it references its parent's, or it is an analysis),
    extra files (an analysis's results, predictions...), state.json.

    state.json records every other file's SHA-256 under ``files``.
    """
    files = {MASKS_FILE: tensors_bytes(masks)} if masks is not None else {}
    if weights is not None:
        files[WEIGHTS_FILE] = tensors_bytes(weights)
    files.update(extra or {})
    spec = {**spec, "files": {name: sha256(content) for name, content in files.items()}}
    files[STATE_FILE] = json.dumps(spec, indent=1, sort_keys=True).encode()
    return files


def hash_tags(files: dict[str, bytes]) -> dict[str, str]:
    return {TAG_HASH_PREFIX + name: sha256(content) for name, content in files.items()}


def verify_file(run_id: str, name: str, content: bytes, tags: dict, spec: dict | None = None) -> None:
    """An IntegrityError unless `content` has the SHA-256 recorded for it (tag, and state.json's)."""
    digest = sha256(content)
    recorded = tags.get(TAG_HASH_PREFIX + name)
    in_spec = (spec or {}).get("files", {}).get(name)
    for where, expected in (("tag", recorded), (STATE_FILE, in_spec)):
        if expected is not None and expected != digest:
            raise IntegrityError(f"state {run_id}: {name} does not match its recorded SHA-256 ({where}): "
                                 f"the file was changed or damaged")


def local_path(uri: str) -> Path | None:
    """The local directory behind an artifact URI, or None if it is remote."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def shared_weights(source: dict, masks: dict, zeroed: dict | None = None) -> dict:
    """The weights of a prune-only state that shares its parent's file (state.json's ``weights_from``):
    the parent's weights (`source`) times the state's masks, and the entries state.json lists under
    ``zeroed`` ({tensor: flat indices}: the biases and BatchNorm entries of channels the prune removed)
    set to 0.0. Exactly the tensors the prune step computed (compute checks it bit for bit before it
    stores a state this way)."""
    import torch

    out = {}
    for name, tensor in source.items():
        tensor = tensor * masks[name] if name in masks else tensor
        positions = (zeroed or {}).get(name)
        if positions:
            flat = tensor.reshape(-1).clone()
            flat[torch.tensor(positions, dtype=torch.long)] = 0.0
            tensor = flat.reshape(tensor.shape)
        out[name] = tensor
    return out
