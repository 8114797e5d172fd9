"""Tokenize a corpus once into flat token files (numpy memmaps) plus a manifest.

Layout of a prepared corpus folder:

    manifest.json           what was tokenized, how, and which document is in which split
    {split}.bin             all tokens of the split, documents concatenated (no separator), dtype in manifest
    {split}.offsets.npy     int64 [n_documents + 1]: token offset where each document starts (+ total)
    {split}.docs.txt        the document ids in token-file order (relative paths, or path#line for JSONL)

Splits: "train", "validation" and, when test folders are held out (the default
for the stdlib), "test". Flat memmaps rather than array_record: a packed window
is one contiguous slice (benchmarks/results/data_loading.json has the measured
comparison).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from ttc_jax.data.corpus import (Corpus, documents, iter_jsonl_texts, read_text_file, resolve_source,
                                 split_documents)
from ttc_jax.data.tokenizer import ByteTokenizer, get_tokenizer

FORMAT = "ttc-tokens-v1"
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids 0..vocab_size-1."""
    return np.dtype(np.uint16 if vocab_size <= 2 ** 16 else np.uint32)


def _fingerprint(corpus: Corpus, tok, options: dict) -> str:
    h = hashlib.sha256()
    spec = {k: v for k, v in tok.spec.items() if k != "path"}  # the tokenizer's identity is its content
    h.update(json.dumps({"format": FORMAT, "kind": corpus.kind, "tokenizer": spec, **options},
                        sort_keys=True).encode())
    for path in corpus.files:
        h.update(os.path.relpath(path, corpus.root).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def load_manifest(data_dir: str | os.PathLike) -> dict:
    """The manifest of a prepared corpus; ValueError if `data_dir` is not one."""
    path = os.path.join(os.fspath(data_dir), MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"data_dir={os.fspath(data_dir)!r} holds no {MANIFEST}; "
                         "run `ttc data prepare --out DIR` first")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"data_dir={os.fspath(data_dir)!r}: manifest format {manifest.get('format')!r}, "
                         f"expected {FORMAT!r}")
    return manifest


class _SplitWriter:
    def __init__(self, folder: str, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype
        self.folder = folder
        self.file = open(os.path.join(folder, f"{name}.bin"), "wb")
        self.offsets = [0]
        self.ids: list[str] = []
        self.n_chars = 0
        self.decode_errors = 0

    def add(self, doc_id: str, ids: np.ndarray, n_chars: int, decode_error: bool) -> None:
        self.file.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self.offsets.append(self.offsets[-1] + int(ids.size))
        self.ids.append(doc_id)
        self.n_chars += n_chars
        self.decode_errors += int(decode_error)

    def close(self, list_files: bool) -> dict:
        self.file.close()
        np.save(os.path.join(self.folder, f"{self.name}.offsets.npy"), np.asarray(self.offsets, np.int64))
        with open(os.path.join(self.folder, f"{self.name}.docs.txt"), "w") as f:
            f.writelines(i + "\n" for i in self.ids)
        info = {"tokens": f"{self.name}.bin", "offsets": f"{self.name}.offsets.npy",
                "documents": f"{self.name}.docs.txt", "n_documents": len(self.ids),
                "n_tokens": self.offsets[-1], "n_chars": self.n_chars,
                "decode_error_documents": self.decode_errors}
        if list_files:
            info["files"] = list(self.ids)
        return info


# the split `ttc data prepare` makes by default (the shipped stdlib model was trained on its train split)
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_SPLIT_SEED = 0


def prepare_corpus(source: str | os.PathLike | None, out_dir: str | os.PathLike, *, tokenizer="byte",
                   val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SPLIT_SEED,
                   text_field: str = "text",
                   heldout_tests: bool | None = None, progress: bool = False) -> dict:
    """Tokenize `source` into `out_dir` (atomically) and return the manifest (also out_dir/manifest.json).

    source: None or "stdlib" (the Python standard library's *.py here), a folder, a glob of text
    files, or .jsonl files whose objects hold `text_field`. Documents are split into train and
    validation by a seeded hash of their id (files for text corpora: no file in two splits).
    heldout_tests (default: True for the stdlib only) puts files under test/, tests/ and
    idle_test/ folders in a separate "test" split, never in train or validation.
    Re-running with the same corpus and options returns the existing manifest; a different
    corpus in an existing `out_dir` is refused.
    """
    tok = get_tokenizer(tokenizer)
    corpus = resolve_source(source, text_field=text_field)
    if heldout_tests is None:
        heldout_tests = corpus.kind == "stdlib"
    docs = documents(corpus)
    splits = split_documents(docs, val_fraction=val_fraction, seed=seed, heldout_tests=heldout_tests)
    options = {"val_fraction": float(val_fraction), "seed": int(seed), "heldout_tests": bool(heldout_tests),
               "text_field": text_field if corpus.kind == "jsonl" else None}
    fingerprint = _fingerprint(corpus, tok, options)

    out = os.path.abspath(os.fspath(out_dir))
    if os.path.isfile(os.path.join(out, MANIFEST)):
        existing = load_manifest(out)
        if existing.get("fingerprint") == fingerprint:
            return existing
        raise ValueError(f"out_dir={out!r} already holds a different prepared corpus "
                         f"({existing.get('source', {}).get('kind')}, {existing.get('tokenizer_name')}); "
                         "choose another --out or delete it")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"out_dir={out!r} exists and is not a prepared corpus; choose an empty or new folder")

    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    try:
        manifest = _write(corpus, docs, splits, tok, tmp, progress)
        manifest.update(fingerprint=fingerprint, **options,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(corpus: Corpus, docs, splits: dict, tok, folder: str, progress: bool) -> dict:
    dtype = token_dtype(tok.vocab_size)
    split_of = {d.id: name for name, ds in splits.items() for d in ds}
    writers = {name: _SplitWriter(folder, name, dtype) for name in splits}
    max_id = -1

    def encode(text: str) -> np.ndarray:
        nonlocal max_id
        ids = tok.encode_array(text) if isinstance(tok, ByteTokenizer) else np.asarray(tok.encode(text), np.int64)
        if ids.size:
            hi = int(ids.max())
            if hi >= tok.vocab_size or int(ids.min()) < 0:
                raise ValueError(f"tokenizer {tok.name} produced id {hi} outside its vocabulary "
                                 f"[0, {tok.vocab_size})")
            max_id = max(max_id, hi)
        return ids

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(os.path.getsize(p) for p in corpus.files), unit="B", unit_scale=True,
                   desc="tokenizing", dynamic_ncols=True)
    if corpus.kind == "jsonl":
        for path in corpus.files:
            rel = os.path.relpath(path, corpus.root).replace(os.sep, "/")
            for lineno, text in iter_jsonl_texts(path, corpus.text_field):
                doc_id = f"{rel}#{lineno}"
                writers[split_of[doc_id]].add(doc_id, encode(text), len(text), False)
            if bar is not None:
                bar.update(os.path.getsize(path))
    else:
        for doc in docs:
            text, bad = read_text_file(doc.path)
            writers[split_of[doc.id]].add(doc.id, encode(text), len(text), bad)
            if bar is not None:
                bar.update(os.path.getsize(doc.path))
    if bar is not None:
        bar.close()
    return {
        "format": FORMAT,
        "source": corpus.description,
        "split_unit": corpus.split_unit,
        "tokenizer": tok.spec,
        "tokenizer_name": tok.name,
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "max_token_id": max_id,
        "document_boundaries": "{split}.offsets.npy: int64 token offset of each document's start, then the "
                               "total; documents are concatenated without a separator token",
        "splits": {name: w.close(list_files=corpus.kind != "jsonl") for name, w in writers.items()},
    }
