"""Tokenizers: the built-in byte-level one and any Hugging Face `tokenizer.json`.

Each exposes `vocab_size`, `encode(str) -> list[int]`, `decode(ids) -> str`,
a short `name` and a JSON-able `spec` that `get_tokenizer` accepts back, so a
prepared corpus or a checkpoint can record which tokenizer made its ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 (the tiny presets' vocab_size=256); no special tokens."""

    vocab_size = 256
    name = "byte"

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": "byte"}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as a uint8 array without a Python list (the fast path of corpus preparation)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Sequence[int]) -> str:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= 256):
            bad = int(arr.min() if arr.min() < 0 else arr.max())
            raise ValueError(f"ByteTokenizer.decode: id {bad} is outside the vocabulary [0, 256)")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer loaded from a tokenizer.json (no network access)."""

    def __init__(self, path: str | os.PathLike):
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):
            raise ValueError(f"tokenizer path {path!r} is not a file; expected 'byte' or a tokenizer.json")
        from tokenizers import Tokenizer  # imported here: the byte tokenizer needs no extra package

        try:
            self._tok = Tokenizer.from_file(path)
        except Exception as e:  # the Rust side raises a plain Exception on malformed JSON
            raise ValueError(f"tokenizer file {path!r} is not a valid tokenizer.json: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.path = path
        self.sha256 = _sha256_file(path)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.name = f"hf:{os.path.basename(path)}"

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "path": self.path, "sha256": self.sha256}

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = [i for i in ids if i < 0 or i >= self.vocab_size]
        if bad:
            raise ValueError(f"{self.name}.decode: id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=False)


Tokenizer = ByteTokenizer | HFTokenizer


def get_tokenizer(spec: str | dict | Tokenizer) -> Tokenizer:
    """"byte", a path to a tokenizer.json, a `.spec` dict, or a tokenizer (returned as is).

    A spec dict from an HF tokenizer is checked against the file's sha256, so a
    corpus or checkpoint is never decoded with a tokenizer that changed since.
    """
    if isinstance(spec, (ByteTokenizer, HFTokenizer)):
        return spec
    if isinstance(spec, dict):
        kind = spec.get("kind")
        if kind == "byte":
            return ByteTokenizer()
        if kind == "hf" and "path" in spec:
            tok = HFTokenizer(spec["path"])
            if spec.get("sha256") not in (None, tok.sha256):
                raise ValueError(f"tokenizer file {tok.path!r} changed since it was recorded "
                                 f"(sha256 {tok.sha256[:12]}..., recorded {str(spec['sha256'])[:12]}...)")
            return tok
        raise ValueError(f"unknown tokenizer spec {spec!r}; expected {{'kind': 'byte'}} or "
                         "{'kind': 'hf', 'path': ...}")
    if isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s == "byte":
            return ByteTokenizer()
        if os.path.isfile(s):
            return HFTokenizer(s)
        raise ValueError(f"unknown tokenizer spec {s!r}; expected 'byte' or a path to an existing tokenizer.json")
    raise ValueError(f"unknown tokenizer spec {spec!r}; expected 'byte' or a path to a tokenizer.json")
