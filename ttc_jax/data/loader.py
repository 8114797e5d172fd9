"""Packed, shuffled, resumable batches from a prepared corpus, on Grain.

A split's documents are concatenated; window i holds tokens [i*T, i*T + T + 1),
so consecutive windows overlap by one token and every token after the first is
a target exactly once. Targets whose input is in another document are masked
(the model sees the previous document as context but is not scored across the
boundary); the tail window is padded (mask 0, segment 0). Window order is a
Grain index shuffle, reseeded every epoch, sliced by host shard, then batched,
so the position is one integer and resuming is exact.
"""

from __future__ import annotations

import math
import os

import grain
import numpy as np

from ttc_jax.data.prepare import load_manifest

BATCH_KEYS = ("inputs", "targets", "mask", "segment_ids")


class PackedWindows:
    """Random access to the packed windows of one split (a memmap; nothing is loaded up front)."""

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int, manifest: dict | None = None):
        manifest = manifest or load_manifest(data_dir)
        if split not in manifest["splits"]:
            raise ValueError(f"split={split!r} is not in {os.fspath(data_dir)!r}; "
                             f"expected one of {sorted(manifest['splits'])}")
        info = manifest["splits"][split]
        self.seq_len = seq_len
        n = int(info["n_tokens"])
        if n < seq_len + 1:
            raise ValueError(f"split {split!r} of {os.fspath(data_dir)!r} has {n} tokens, fewer than one "
                             f"sequence of seq_len={seq_len} plus its next-token target ({seq_len + 1})")
        self.tokens = np.memmap(os.path.join(data_dir, info["tokens"]), dtype=np.dtype(manifest["dtype"]),
                                mode="r", shape=(n,))
        self.offsets = np.load(os.path.join(data_dir, info["offsets"]))
        self.n_tokens = n
        self.n_windows = math.ceil((n - 1) / seq_len)

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """Window i (i >= len(self): an all-padding row)."""
        T = self.seq_len
        out = {"inputs": np.zeros(T, np.int32), "targets": np.zeros(T, np.int32),
               "mask": np.zeros(T, np.float32), "segment_ids": np.zeros(T, np.int32)}
        if i >= self.n_windows:
            return out
        start = i * T
        stop = min(start + T + 1, self.n_tokens)
        chunk = np.asarray(self.tokens[start:stop], dtype=np.int32)
        L = chunk.size - 1
        doc = np.searchsorted(self.offsets, np.arange(start, stop), side="right") - 1
        out["inputs"][:L] = chunk[:-1]
        out["targets"][:L] = chunk[1:]
        out["mask"][:L] = doc[:-1] == doc[1:]
        out["segment_ids"][:L] = 1 + np.concatenate([[0], np.cumsum(doc[1:L] != doc[:L - 1])])
        return out


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive int")
    return int(value)


class DataIterator:
    """Iterator of batches {"inputs", "targets": int32 [B, T], "mask": float32 [B, T], "segment_ids": int32 [B, T]}.

    `get_state()` is a JSON-able dict; `set_state(state)` continues exactly where that state was
    taken (it refuses a state from a differently configured iterator).
    """

    def __init__(self, data_dir, split, *, seq_len, batch_size, seed, shuffle, shard_index, shard_count,
                 num_epochs, vocab_size, prefetch):
        data_dir = os.fspath(data_dir)
        self.seq_len = _positive_int("seq_len", seq_len)
        self.batch_size = _positive_int("batch_size", batch_size)
        shard_count = _positive_int("shard_count", shard_count)
        if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) \
                or not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index={shard_index!r}; expected an int in [0, shard_count={shard_count})")
        if num_epochs == "auto":
            num_epochs = None if split == "train" else 1
        if num_epochs is not None:
            num_epochs = _positive_int("num_epochs", num_epochs)
        self.manifest = load_manifest(data_dir)
        if vocab_size is not None and self.manifest["max_token_id"] >= vocab_size:
            raise ValueError(f"data_dir={data_dir!r} holds token id {self.manifest['max_token_id']} "
                             f">= vocab_size={vocab_size} (tokenizer {self.manifest['tokenizer_name']}, "
                             f"vocab {self.manifest['vocab_size']})")
        self.windows = PackedWindows(data_dir, split, self.seq_len, self.manifest)
        self.num_epochs = num_epochs
        rows_per_step = self.batch_size * shard_count
        # a finite pass is padded with empty rows to whole global batches, so every shard sees
        # the same number of full batches
        n_rows = len(self.windows) if num_epochs is None else math.ceil(len(self.windows) / rows_per_step) * rows_per_step
        self.num_batches = None if num_epochs is None else n_rows * num_epochs // rows_per_step

        ds = grain.MapDataset.range(n_rows)
        if shuffle:
            ds = ds.shuffle(seed=int(seed))
        ds = ds.repeat(num_epochs)  # each epoch reshuffled
        ds = ds[shard_index::shard_count].map(self.windows.__getitem__)
        ds = ds.batch(self.batch_size, drop_remainder=True)
        read = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
        self._iter = iter(ds.to_iter_dataset(read))
        self._identity = {"split": split, "seq_len": self.seq_len, "batch_size": self.batch_size,
                          "seed": int(seed), "shuffle": bool(shuffle), "shard_index": int(shard_index),
                          "shard_count": shard_count, "num_epochs": num_epochs,
                          "fingerprint": self.manifest["fingerprint"]}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iter)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an infinite (train) iterator has no length")
        return self.num_batches

    @property
    def windows_per_epoch(self) -> int:
        return len(self.windows)

    def get_state(self) -> dict:
        return {**self._identity, "grain": self._iter.get_state()}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or "grain" not in state:
            raise ValueError(f"state must be a dict from DataIterator.get_state(), got {type(state).__name__}")
        for key, value in self._identity.items():
            if state.get(key) != value:
                raise ValueError(f"iterator state has {key}={state.get(key)!r}, but this iterator has "
                                 f"{key}={value!r}; restore with the same data and settings")
        self._iter.set_state(state["grain"])


def make_iterator(data_dir: str | os.PathLike, split: str, *, seq_len: int, batch_size: int, seed: int = 0,
                  shuffle: bool = True, shard_index: int = 0, shard_count: int = 1,
                  num_epochs: int | None | str = "auto", vocab_size: int | None = None,
                  prefetch: int = 2) -> DataIterator:
    """Batches of packed sequences from `ttc data prepare`'s output.

    batch_size is per shard (per host); shard i of n takes every n-th row of the global
    shuffled order. num_epochs "auto": infinite for "train" (reshuffled every epoch), one
    pass otherwise (padded to whole batches; padding rows have mask 0). vocab_size, when
    given, is checked against the largest token id in the corpus.
    """
    return DataIterator(data_dir, split, seq_len=seq_len, batch_size=batch_size, seed=seed, shuffle=shuffle,
                        shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs,
                        vocab_size=vocab_size, prefetch=prefetch)
