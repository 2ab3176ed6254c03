"""A state's files: safetensors tensors and a JSON spec, their hashes, and where they are.

Nothing is pickled: safetensors holds tensors only, state.json is JSON, so
loading a state cannot run code. Every file's SHA-256 is recorded when the state
is finished (the tensor files' in state.json, all three in tags) and checked on
every read (`verify_files`): a flipped byte, a truncated or swapped file is an
`IntegrityError`, never a silently different state.

Hashes catch damage, not wrong content written with a consistent record. So the tensor files'
contents are checked too, from their safetensors headers and bytes, without torch
(`check_masks`, `check_layout`): masks are bool (every byte 0 or 1) and keep at least one weight,
a root's weights are float32 (``num_batches_tracked`` int64) and its masks all true, and every
other state holds exactly its root's tensors (names, dtypes, shapes): the root is the
architecture its lineage was computed on.
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
        raise IntegrityError(
            f"state {run_id}: {name} is not a readable safetensors file ({' '.join(str(error).split())[:120]})"
        ) from None


# bytes per element of the safetensors dtypes
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
MAX_HEADER_BYTES = 100 << 20


class Tensor(tuple):
    """One tensor of a safetensors file, from its header: (dtype, shape, start, end) (byte offsets in the file)."""

    dtype = property(lambda self: self[0])
    shape = property(lambda self: self[1])


def tensor_layout(content: bytes, *, run_id: str, name: str) -> tuple[dict[str, Tensor], dict]:
    """({tensor: Tensor}, metadata) of a safetensors file, its header checked (offsets inside the file, sizes
    that fit dtype and shape); an IntegrityError naming the run and file otherwise. No torch."""

    def broken(why: str) -> IntegrityError:
        return IntegrityError(f"state {run_id}: {name} is not a readable safetensors file ({why})")

    if len(content) < 8:
        raise broken("shorter than its header")
    size = int.from_bytes(content[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(content) - 8):
        raise broken("its header is longer than the file")
    try:
        header = json.loads(content[8 : 8 + size])
    except (ValueError, UnicodeDecodeError):
        raise broken("its header is not JSON") from None
    if not isinstance(header, dict):
        raise broken("its header is not a mapping")
    metadata = header.pop("__metadata__", None) or {}
    data, tensors = 8 + size, {}
    for tensor, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            count = 1
            for dim in shape:
                count *= dim if isinstance(dim, int) and dim >= 0 else -1
            ok = (
                dtype in DTYPE_BYTES
                and count >= 0
                and isinstance(start, int)
                and isinstance(end, int)
                and 0 <= start <= end <= len(content) - data
                and end - start == count * DTYPE_BYTES[dtype]
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise broken(f"tensor {tensor!r} has no valid dtype, shape and offsets")
        tensors[tensor] = Tensor((dtype, shape, data + start, data + end))
    return tensors, metadata if isinstance(metadata, dict) else {}


def check_masks(run_id: str, content: bytes, masks: dict[str, Tensor], *, all_kept: bool = False) -> None:
    """Masks are bool tensors whose every byte is 0 or 1, and keep at least one weight (`all_kept`: every
    one, a root's); an IntegrityError naming the run and tensor otherwise."""
    kept = total = 0
    for tensor, entry in masks.items():
        if entry.dtype != "BOOL":
            raise IntegrityError(f"state {run_id}: mask {tensor!r} is {entry.dtype}, not bool")
        values = content[entry[2] : entry[3]]
        if values.translate(None, b"\x00\x01"):
            raise IntegrityError(f"state {run_id}: mask {tensor!r} holds values other than true (1) and false (0)")
        ones = values.count(1)
        if all_kept and ones != len(values):
            raise IntegrityError(f"state {run_id}: mask {tensor!r} of a root state is not all true")
        kept, total = kept + ones, total + len(values)
    if total and not kept:
        raise IntegrityError(f"state {run_id}: every mask is all false (no weight of the network is kept)")


def check_root_layout(run_id: str, weights: dict[str, Tensor], masks: dict[str, Tensor]) -> None:
    """A root state's tensors: float32 weights (int64 BatchNorm counters), one mask per prunable weight of
    the same shape."""
    for tensor, entry in weights.items():
        allowed = ("I64",) if tensor.rsplit(".", 1)[-1] == "num_batches_tracked" else ("F32",)
        if entry.dtype not in allowed:
            raise IntegrityError(
                f"state {run_id}: weights tensor {tensor!r} is {entry.dtype}, not "
                f"{'int64' if allowed == ('I64',) else 'float32'}"
            )
    for tensor, entry in masks.items():
        if tensor not in weights or weights[tensor].shape != entry.shape:
            raise IntegrityError(f"state {run_id}: mask {tensor!r} does not fit its weights")


def check_layout(
    run_id: str, what: str, tensors: dict[str, Tensor], reference: dict[str, Tensor], root_run: str
) -> None:
    """`tensors` (a state's weights or masks) are exactly the root's: the same names, dtypes and shapes."""

    def differs(why: str) -> IntegrityError:
        return IntegrityError(f"state {run_id}: {why} (its architecture: root state {root_run[:8]})")

    for tensor in tensors:
        if tensor not in reference:
            raise differs(f"{what} holds {tensor!r}, which the architecture does not have")
    for tensor, entry in reference.items():
        if tensor not in tensors:
            raise differs(f"{what} lacks {tensor!r}")
        mine = tensors[tensor]
        if mine.dtype != entry.dtype or mine.shape != entry.shape:
            raise differs(
                f"{what} tensor {tensor!r} is {mine.dtype} {list(mine.shape)}, the architecture's is "
                f"{entry.dtype} {list(entry.shape)}"
            )


def state_files(
    spec: dict, masks: dict | None, weights: dict | None, extra: dict[str, bytes] | None = None
) -> dict[str, bytes]:
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
            raise IntegrityError(
                f"state {run_id}: {name} does not match its recorded SHA-256 ({where}): the file was changed or damaged"
            )


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
