"""Corpus discovery: which documents a source holds, and their train / validation / test split.

A source is the Python standard library on this machine (the default, no
download), a folder, a glob of text files, or JSONL files with a text field.
A text file is one document; a JSONL line is one document. Documents are
split by a hash of (seed, document id), so the split is deterministic and no
document is in two splits; for text corpora documents are files, so the split
is by file.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import platform
import sysconfig
from collections.abc import Iterator

# Folders of the stdlib that are not the standard library's own source.
STDLIB_EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__", "lib-dynload")
# A file with one of these folder names in its path is a test file (held out of train by default):
# test/ is CPython's test suite; */tests/, */test/ and idlelib/idle_test/ are the packages' own tests.
TEST_DIR_NAMES = ("test", "tests", "idle_test")


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: `id` is "relative/path" for a text file, "relative/path#line" for a JSONL line."""

    id: str
    path: str  # absolute path of the file holding it
    line: int | None = None  # 1-based line in a JSONL file


@dataclasses.dataclass(frozen=True)
class Corpus:
    kind: str  # "stdlib" | "folder" | "glob" | "jsonl"
    root: str  # folder that document ids are relative to
    files: tuple[str, ...]  # absolute paths, sorted
    description: dict
    text_field: str = "text"

    @property
    def split_unit(self) -> str:
        return "document (JSONL line)" if self.kind == "jsonl" else "file"


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _walk(root: str, suffixes: tuple[str, ...] | None, excluded_dirs: tuple[str, ...] = ()) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in excluded_dirs)
        for name in filenames:
            if name.startswith("."):
                continue
            if suffixes is None or name.endswith(suffixes):
                out.append(os.path.join(dirpath, name))
    return sorted(out)


def resolve_source(source: str | os.PathLike | None, *, text_field: str = "text") -> Corpus:
    """The files of a source; raises ValueError for a missing or empty one."""
    if source is None or os.fspath(source) == "stdlib":
        root = stdlib_root()
        files = _walk(root, (".py",), STDLIB_EXCLUDED_DIRS)
        rel = [os.path.relpath(f, root).split(os.sep) for f in files]
        desc = {"kind": "stdlib", "root": root, "pattern": "**/*.py",
                "excluded_dirs": list(STDLIB_EXCLUDED_DIRS),
                "subfolders": sorted({r[0] for r in rel if len(r) > 1}),
                "python": platform.python_version()}
        if not files:
            raise ValueError(f"source='stdlib': no *.py files under {root!r}")
        return Corpus("stdlib", root, tuple(files), desc)
    src = os.fspath(source)
    if any(c in src for c in "*?["):
        files = sorted(os.path.abspath(p) for p in glob.glob(src, recursive=True) if os.path.isfile(p))
        if not files:
            raise ValueError(f"source={src!r}: the glob matches no files")
        root = os.path.commonpath([os.path.dirname(f) for f in files])
        kind = "jsonl" if all(f.endswith(".jsonl") for f in files) else "glob"
    elif os.path.isdir(src):
        root = os.path.abspath(src)
        files = _walk(root, None)
        if not files:
            raise ValueError(f"source={src!r}: the folder holds no files")
        kind = "jsonl" if all(f.endswith(".jsonl") for f in files) else "folder"
    elif os.path.isfile(src):
        root = os.path.dirname(os.path.abspath(src))
        files = [os.path.abspath(src)]
        kind = "jsonl" if src.endswith(".jsonl") else "glob"
    else:
        raise ValueError(f"source={src!r} does not exist; expected 'stdlib', a folder, a glob or a .jsonl file")
    if kind != "jsonl" and any(f.endswith(".jsonl") for f in files):
        raise ValueError(f"source={src!r} mixes .jsonl and other files; give one kind")
    desc = {"kind": kind, "source": src, "root": root}
    if kind == "jsonl":
        desc["text_field"] = text_field
    return Corpus(kind, root, tuple(files), desc, text_field)


def is_test_file(doc_id: str) -> bool:
    """True for a document under a test folder (test/, tests/, idle_test/)."""
    parts = doc_id.split("#", 1)[0].split("/")[:-1]
    return any(p in TEST_DIR_NAMES for p in parts)


def documents(corpus: Corpus) -> list[Document]:
    """Every document of the corpus, in file order (JSONL lines are parsed for their ids only)."""
    docs = []
    for path in corpus.files:
        rel = os.path.relpath(path, corpus.root).replace(os.sep, "/")
        if corpus.kind != "jsonl":
            docs.append(Document(rel, path))
            continue
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    docs.append(Document(f"{rel}#{lineno}", path, lineno))
    if not docs:
        raise ValueError(f"source {corpus.description.get('source', corpus.root)!r} holds no documents")
    return docs


def read_text_file(path: str) -> tuple[str, bool]:
    """(text, had_decode_errors): the file as UTF-8, invalid bytes replaced."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def iter_jsonl_texts(path: str, text_field: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line of a JSONL file, validated."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a string field {text_field!r}")
            yield lineno, record[text_field]


def _rank(seed: int, doc_id: str) -> str:
    return hashlib.sha256(f"{seed}\0{doc_id}".encode()).hexdigest()


def split_documents(docs: list[Document], *, val_fraction: float, seed: int,
                    heldout_tests: bool) -> dict[str, list[Document]]:
    """{"train", "validation"[, "test"]}: test-folder documents to "test" when heldout_tests, the rest split
    so that round(val_fraction * n) of them (at least 1 when val_fraction > 0) are validation."""
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction={val_fraction!r}; expected a number in [0, 1)")
    tests = [d for d in docs if heldout_tests and is_test_file(d.id)]
    rest = [d for d in docs if not (heldout_tests and is_test_file(d.id))]
    if not rest:
        raise ValueError("the corpus has no documents outside test folders to train on")
    n_val = 0 if val_fraction == 0 else max(1, math.floor(val_fraction * len(rest) + 0.5))
    if n_val >= len(rest):
        raise ValueError(f"val_fraction={val_fraction} of {len(rest)} documents leaves none to train on")
    ranked = sorted(rest, key=lambda d: _rank(seed, d.id))
    val_ids = {d.id for d in ranked[:n_val]}
    splits = {"train": [d for d in rest if d.id not in val_ids],
              "validation": [d for d in rest if d.id in val_ids]}
    if heldout_tests:
        splits["test"] = tests
    return splits
