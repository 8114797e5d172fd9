"""Data pipeline: tokenizers, corpus preparation and the split by file, packing and masks against a
loop oracle, iterator determinism / resume / sharding, and every bad input."""

import json
import os

import numpy as np
import pytest

from ttc_jax.cli import main
from ttc_jax.data import ByteTokenizer, HFTokenizer, get_tokenizer, load_manifest, make_iterator, prepare_corpus
from ttc_jax.data.corpus import is_test_file


def write_corpus(folder, n_files=12, seed=0, max_len=60):
    """Random printable text files of random length (one empty), in two subfolders."""
    rng = np.random.default_rng(seed)
    texts = {}
    for i in range(n_files):
        n = 0 if i == 3 else int(rng.integers(1, max_len))
        text = "".join(chr(c) for c in rng.integers(32, 127, size=n))
        rel = f"{'a' if i % 2 else 'b'}/doc{i:02d}.txt"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
        texts[rel] = text
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    texts = write_corpus(root / "src")
    manifest = prepare_corpus(str(root / "src"), str(root / "data"), val_fraction=0.25, seed=0)
    return root, texts, manifest


def windows_oracle(tokens, offsets, T):
    """Loop oracle of the packed windows: window i is tokens[i*T : i*T+T+1]."""
    doc_of = lambda p: next(j for j in range(len(offsets) - 1) if offsets[j] <= p < offsets[j + 1])
    n = len(tokens)
    rows = []
    for start in range(0, n - 1, T):
        inp, tgt, mask, seg = [0] * T, [0] * T, [0.0] * T, [0] * T
        s = 1
        for t in range(T):
            p = start + t
            if p + 1 >= n:
                break
            inp[t], tgt[t] = tokens[p], tokens[p + 1]
            mask[t] = float(doc_of(p) == doc_of(p + 1))
            if t > 0 and doc_of(p) != doc_of(p - 1):
                s += 1
            seg[t] = s
        rows.append((inp, tgt, mask, seg))
    return rows


# --- tokenizers -------------------------------------------------------------------

def test_byte_tokenizer_round_trip():
    tok = get_tokenizer("byte")
    text = "def f(x):\n    return x ** 2  # é ✓"
    ids = tok.encode(text)
    assert ids == list(text.encode()) and tok.vocab_size == 256 and max(ids) < 256
    assert tok.decode(ids) == text and tok.decode(ids[:-1]).endswith("\ufffd")  # cut in a character: replaced
    assert get_tokenizer(tok.spec).name == "byte"


def make_hf_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["def add(a, b):\n    return a + b\n", "class Foo:\n    pass\n", "import os\nprint(os.getcwd())\n"]
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))
    return path


def test_hf_tokenizer_from_a_local_tokenizer_json(tmp_path):
    path = make_hf_tokenizer(tmp_path / "tokenizer.json")
    tok = get_tokenizer(str(path))
    assert isinstance(tok, HFTokenizer) and 256 < tok.vocab_size <= 300
    text = "def add(x, y):\n    return os.getcwd()\n"
    ids = tok.encode(text)
    assert len(ids) < len(text.encode()) and tok.decode(ids) == text
    assert get_tokenizer(json.loads(json.dumps(tok.spec))).encode(text) == ids
    # a corpus tokenized with it records the tokenizer and its ids
    (tmp_path / "src").mkdir()
    for i in range(4):
        (tmp_path / "src" / f"f{i}.py").write_text(text * (i + 1))
    m = prepare_corpus(str(tmp_path / "src"), str(tmp_path / "data"), tokenizer=str(path), val_fraction=0.25)
    assert m["tokenizer"]["sha256"] == tok.sha256 and m["vocab_size"] == tok.vocab_size
    assert m["dtype"] == "uint16" and m["max_token_id"] < tok.vocab_size
    train = m["splits"]["train"]
    tokens = np.fromfile(tmp_path / "data" / train["tokens"], dtype=np.uint16)
    assert tokens.tolist() == sum((tok.encode(text * (int(f[1]) + 1)) for f in train["files"]), [])


# --- preparation and the split ------------------------------------------------------

def test_prepare_splits_by_file_and_records_boundaries(corpus):
    root, texts, m = corpus
    train, val = m["splits"]["train"]["files"], m["splits"]["validation"]["files"]
    assert not set(train) & set(val) and sorted(train + val) == sorted(texts)
    assert len(val) == 3  # round(0.25 * 12)
    assert m == load_manifest(root / "data")
    for name in ("train", "validation"):
        s = m["splits"][name]
        tokens = np.memmap(root / "data" / s["tokens"], dtype=np.uint16, mode="r")
        offsets = np.load(root / "data" / s["offsets"])
        expected = [list(texts[f].encode()) for f in s["files"]]
        assert tokens.tolist() == sum(expected, [])
        assert np.diff(offsets).tolist() == [len(e) for e in expected]
        assert (root / "data" / s["documents"]).read_text().split() == s["files"]
    # deterministic in the seed; another seed gives another split
    again = prepare_corpus(str(root / "src"), str(root / "again"), val_fraction=0.25, seed=0)
    assert again["splits"]["validation"]["files"] == val
    other = prepare_corpus(str(root / "src"), str(root / "other"), val_fraction=0.25, seed=1)
    assert other["splits"]["validation"]["files"] != val
    # re-running on the same folder is a no-op returning the same manifest
    assert prepare_corpus(str(root / "src"), str(root / "data"), val_fraction=0.25, seed=0) == m


def test_default_corpus_is_the_stdlib_with_tests_held_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("stdlib") / "data"
    m = prepare_corpus(None, str(out))
    splits = {k: set(v["files"]) for k, v in m["splits"].items()}
    assert set(splits) == {"train", "validation", "test"}
    assert not (splits["train"] & splits["validation"] or splits["train"] & splits["test"]
                or splits["validation"] & splits["test"])
    assert "os.py" in splits["train"] | splits["validation"] and any(f.startswith("test/") for f in splits["test"])
    assert all(is_test_file(f) for f in splits["test"])
    assert not any(is_test_file(f) for f in splits["train"] | splits["validation"])
    assert all(f.endswith(".py") and "site-packages/" not in f for s in splits.values() for f in s)
    assert m["source"]["kind"] == "stdlib" and m["splits"]["train"]["n_tokens"] > 10 * 2 ** 20
    assert {"asyncio", "email", "test"} <= set(m["source"]["subfolders"])
    assert "site-packages" not in m["source"]["subfolders"]


# --- packing ------------------------------------------------------------------

@pytest.mark.parametrize("seq_len", [1, 7, 16])
def test_packed_windows_equal_the_loop_oracle(corpus, seq_len):
    from ttc_jax.data import PackedWindows

    root, _, m = corpus
    s = m["splits"]["train"]
    tokens = np.fromfile(root / "data" / s["tokens"], dtype=np.uint16).tolist()
    offsets = np.load(root / "data" / s["offsets"]).tolist()
    windows = PackedWindows(root / "data", "train", seq_len)
    expected = windows_oracle(tokens, offsets, seq_len)
    assert len(windows) == len(expected)
    for i, (inp, tgt, mask, seg) in enumerate(expected):
        w = windows[i]
        assert w["inputs"].tolist() == inp and w["targets"].tolist() == tgt
        assert w["mask"].tolist() == mask and w["segment_ids"].tolist() == seg
    assert sum(sum(e[2]) for e in expected) == len(tokens) - 1 - (len([d for d in np.diff(offsets) if d]) - 1)


def test_mask_on_a_hand_made_corpus(tmp_path):
    (tmp_path / "src").mkdir()
    for name, text in {"a.txt": "abc", "b.txt": "", "c.txt": "de", "d.txt": "fghij"}.items():
        (tmp_path / "src" / name).write_text(text)
    prepare_corpus(str(tmp_path / "src"), str(tmp_path / "data"), val_fraction=0)
    it = make_iterator(tmp_path / "data", "train", seq_len=4, batch_size=3, shuffle=False, num_epochs=1)
    (batch,) = list(it)
    # tokens "abcdefghij" (b.txt is empty): windows [abcde] [efghi] [ij] (+ padding)
    assert batch["inputs"].tolist() == [list(b"abcd"), list(b"efgh"), [ord("i"), 0, 0, 0]]
    assert batch["targets"].tolist() == [list(b"bcde"), list(b"fghi"), [ord("j"), 0, 0, 0]]
    assert batch["mask"].tolist() == [[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 0]]  # c->d, e->f cross files
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2], [1, 2, 2, 2], [1, 0, 0, 0]]
    assert batch["inputs"].dtype == np.int32 and batch["mask"].dtype == np.float32


# --- the iterator ----------------------------------------------------------------------

def take(it, n):
    return [next(it) for _ in range(n)]


def test_iterator_is_deterministic_reshuffles_epochs_and_covers_each_window_once(corpus):
    root = corpus[0] / "data"
    kw = dict(seq_len=8, batch_size=4)
    a, b = make_iterator(root, "train", seed=3, **kw), make_iterator(root, "train", seed=3, **kw)
    n = a.windows_per_epoch
    batches_a, batches_b = take(a, 2 * n), take(b, 2 * n)  # 8 epochs' worth of rows
    for x, y in zip(batches_a, batches_b):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    rows = np.concatenate([x["inputs"] for x in batches_a])
    epoch0, epoch1 = rows[:n], rows[n:2 * n]
    unshuffled = list(make_iterator(root, "train", shuffle=False, num_epochs=1, seq_len=8, batch_size=1))
    assert sorted(map(tuple, epoch0)) == sorted(tuple(x["inputs"][0]) for x in unshuffled)
    assert sorted(map(tuple, epoch1)) == sorted(map(tuple, epoch0)) and not np.array_equal(epoch0, epoch1)
    c = make_iterator(root, "train", seed=4, **kw)
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(batches_a, take(c, 2 * n)))


def test_resume_from_state_equals_uninterrupted(corpus):
    root = corpus[0] / "data"
    kw = dict(seq_len=8, batch_size=3, seed=7)
    full = take(make_iterator(root, "train", **kw), 12)
    it = make_iterator(root, "train", **kw)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    resumed = make_iterator(root, "train", **kw)
    resumed.set_state(state)
    for x, y in zip(full[5:], take(resumed, 7)):
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_validation_is_one_padded_pass_and_shards_partition_the_global_batch(corpus):
    root, _, m = corpus
    val = make_iterator(root / "data", "validation", seq_len=8, batch_size=4, shuffle=False)
    batches = list(val)
    assert len(batches) == len(val) and len(val) * 4 >= val.windows_per_epoch
    n_targets = sum(float(b["mask"].sum()) for b in batches)
    s = m["splits"]["validation"]
    n_docs = sum(1 for d in np.diff(np.load(root / "data" / s["offsets"])) if d)
    assert n_targets == s["n_tokens"] - 1 - (n_docs - 1)  # every in-document next token scored once
    whole = take(make_iterator(root / "data", "train", seq_len=8, batch_size=4, seed=1), 3)
    shards = [take(make_iterator(root / "data", "train", seq_len=8, batch_size=2, seed=1, shard_index=i,
                                 shard_count=2), 3) for i in range(2)]
    for k in range(3):
        for i in range(2):
            assert np.array_equal(shards[i][k]["inputs"], whole[k]["inputs"][i::2])


# --- the command line ---------------------------------------------------------------

def test_cli_data_prepare(tmp_path, capsys):
    write_corpus(tmp_path / "src", n_files=5)
    assert main(["data", "prepare", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "d"),
                 "--val-fraction", "0.2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["validation"]["documents"] == 1 and summary["vocab_size"] == 256
    assert main(["data", "prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ttc data: error: source=") and "does not exist" in err


def test_jsonl_source_splits_by_document(tmp_path):
    lines = [json.dumps({"text": f"document number {i}", "id": i}) for i in range(10)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    m = prepare_corpus(str(tmp_path / "c.jsonl"), str(tmp_path / "d"), val_fraction=0.2)
    docs = {k: (tmp_path / "d" / v["documents"]).read_text().split() for k, v in m["splits"].items()}
    assert len(docs["validation"]) == 2 and not set(docs["train"]) & set(docs["validation"])
    assert sorted(docs["train"] + docs["validation"]) == sorted(f"c.jsonl#{i}" for i in range(1, 11))


# --- bad input -------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(tmp_path, corpus):
    root = corpus[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    (tmp_path / "notjson.jsonl").write_text('{"text": "ok"}\nnot json\n')
    cases = [
        (lambda: prepare_corpus(str(tmp_path / "missing"), tmp_path / "o1"), "does not exist"),
        (lambda: prepare_corpus(str(tmp_path / "empty"), tmp_path / "o2"), "holds no files"),
        (lambda: prepare_corpus(str(tmp_path / "*.none"), tmp_path / "o3"), "matches no files"),
        (lambda: prepare_corpus(str(tmp_path / "bad.jsonl"), tmp_path / "o4"), "string field 'text'"),
        (lambda: prepare_corpus(str(tmp_path / "notjson.jsonl"), tmp_path / "o5"), "not valid JSON"),
        (lambda: prepare_corpus(str(root / "src"), tmp_path / "o6", tokenizer="gpt5"), "unknown tokenizer spec"),
        (lambda: prepare_corpus(str(root / "src"), tmp_path / "o7", val_fraction=1.5), "val_fraction=1.5"),
        # a different corpus in an existing output folder is refused
        (lambda: prepare_corpus(str(root / "src"), root / "data", val_fraction=0.5), "different prepared corpus"),
        (lambda: get_tokenizer({"kind": "sentencepiece"}), "unknown tokenizer spec"),
        (lambda: ByteTokenizer().decode([65, 300]), "id 300 is outside the vocabulary"),
        (lambda: make_iterator(tmp_path, "train", seq_len=8, batch_size=2), "holds no manifest.json"),
        (lambda: make_iterator(root / "data", "train", seq_len=10 ** 6, batch_size=2), "fewer than one sequence"),
        (lambda: make_iterator(root / "data", "dev", seq_len=8, batch_size=2), "split='dev'"),
        (lambda: make_iterator(root / "data", "train", seq_len=0, batch_size=2), "seq_len=0"),
        (lambda: make_iterator(root / "data", "train", seq_len=8, batch_size=2, shard_index=2, shard_count=2),
         "shard_index=2"),
        (lambda: make_iterator(root / "data", "train", seq_len=8, batch_size=2, vocab_size=100),
         ">= vocab_size=100"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=None) as e:
            fn()
        assert message in str(e.value) and "\n" not in str(e.value), (message, str(e.value))
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())  # no temp folders left behind
    it = make_iterator(root / "data", "train", seq_len=8, batch_size=2)
    with pytest.raises(ValueError, match="seq_len=8, but this iterator has seq_len=4"):
        make_iterator(root / "data", "train", seq_len=4, batch_size=2).set_state(it.get_state())
