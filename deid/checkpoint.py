"""The one checkpoint format of deid's networks (classifiers, AdvGAN and face generators): a
``torch.save`` of plain tensors and strings, read with ``weights_only=True`` (no code is
unpickled), written atomically, with the metadata as JSON beside it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from deid.errors import CheckpointError


class JsonMeta:
    """``to_json`` / ``from_json`` for a checkpoint's metadata dataclass (the fields named in
    ``TUPLES`` come back as tuples)."""

    TUPLES: ClassVar[tuple[str, ...]] = ("size",)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, text: str) -> Self:
        d = json.loads(text)
        for k in cls.TUPLES:
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def write_checkpoint(
    path: Path | str,
    fmt: str,
    meta_json: str,
    module: nn.Module,
    half: tuple[str, ...] = (),
) -> None:
    """Write ``{format, meta, state_dict}`` to ``path`` (via a temporary file, renamed when
    complete) and ``meta_json`` to ``path`` with the suffix ``.json``.

    ``half``: state entries stored in float16 (``load_state_dict`` casts them back to the
    module's float32 parameters): half the bytes for large tables whose values need no more.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if k in half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in module.state_dict().items()
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": fmt, "meta": meta_json, "state_dict": state}, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(meta_json + "\n")


def read_checkpoint(path: Path | str, fmt: str, what: str, missing: str | None = None) -> Any:
    """The stored dict of a checkpoint of format ``fmt``.

    Raises:
        CheckpointError: ``"<missing or what> checkpoint not found: PATH"``, or ``"PATH: not
            a deid <what> checkpoint (...)"`` for an unreadable file or another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{missing or what} checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a deid {what} checkpoint ({e})") from e
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise CheckpointError(f"{path}: not a deid {what} checkpoint (format {fmt})")
    return blob
