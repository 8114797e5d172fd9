"""Data pipeline: tokenizers, corpus preparation into token memmaps, packed resumable batches (Grain).

The loader (and Grain, a few seconds to import) is imported on first use, so `ttc` starts fast.
"""

from ttc_jax.data.prepare import load_manifest, prepare_corpus
from ttc_jax.data.tokenizer import ByteTokenizer, HFTokenizer, get_tokenizer

_LOADER_NAMES = ("BATCH_KEYS", "DataIterator", "PackedWindows", "make_iterator")


def __getattr__(name):
    if name in _LOADER_NAMES:
        from ttc_jax.data import loader
        return getattr(loader, name)
    raise AttributeError(f"module 'ttc_jax.data' has no attribute {name!r}")


__all__ = ["BATCH_KEYS", "ByteTokenizer", "DataIterator", "HFTokenizer", "PackedWindows", "get_tokenizer",
           "load_manifest", "make_iterator", "prepare_corpus"]
