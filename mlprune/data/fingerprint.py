"""What a dataset read is: a fingerprint of its content (sizes and a SHA-256), recorded on every state computed
from it so that a state is never reused on other data (`executor.graph.Execution` compares them)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .readers import Raw

_FINGERPRINTS: dict = {}  # content source -> fingerprint: each dataset read is hashed once per process


def data_fingerprint(read) -> str:
    """``"<train>+<test>:<digest>"`` of what a reader returned: its sizes and a SHA-256 of the tensors it read
    (`Raw`), or of its samples' paths (relative to their folder) and classes (`Folders`). Two data_dirs with
    the same content have the same fingerprint; a corrupted copy, another subset or another version do not."""
    key = (type(read).__name__, read.source) if read.source else None
    if key is not None and key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    digest = hashlib.sha256()
    if isinstance(read, Raw):
        sizes = (int(read.x_train.shape[0]), int(read.x_test.shape[0]))
        for tensor in (read.x_train, read.y_train, read.x_test, read.y_test):
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.contiguous().numpy())
    else:  # image folders; a plugin's map-style Dataset (read per sample) by its size and source
        sizes = tuple(len(s.samples) if hasattr(s, "samples") else len(s) for s in (read.train, read.test))
        digest.update(repr(read.source if not hasattr(read.train, "samples") else ()).encode())
        for split in (read.train, read.test):
            base = Path(getattr(split, "root", "") or "")
            for path, label in getattr(split, "samples", ()):
                relative = os.path.relpath(path, base) if str(base) else str(path)
                digest.update(f"{relative}\0{label}\n".encode())
    found = f"{sizes[0]}+{sizes[1]}:{digest.hexdigest()[:32]}"
    if key is not None:
        _FINGERPRINTS[key] = found
    return found
