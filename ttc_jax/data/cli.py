"""`ttc data prepare`: tokenize a corpus once into token files."""

from __future__ import annotations

import argparse
import json

from ttc_jax.data.prepare import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, prepare_corpus


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare training data")
    dsub = p.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="tokenize a corpus into token files (train/validation split by file)")
    prep.add_argument("--source", default="stdlib",
                      help="'stdlib' (default: this Python's standard library *.py), a folder, a glob of "
                           "text files, or .jsonl file(s)")
    prep.add_argument("--out", required=True, help="output folder (created atomically)")
    prep.add_argument("--tokenizer", default="byte", help="'byte' (vocab 256) or a path to a tokenizer.json")
    prep.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="fraction of documents for validation")
    prep.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of the train/validation split")
    prep.add_argument("--text-field", default="text", help="JSONL field holding the text")
    tests = prep.add_mutually_exclusive_group()
    tests.add_argument("--heldout-tests", dest="heldout_tests", action="store_true", default=None,
                       help="put files under test/, tests/, idle_test/ in a separate 'test' split "
                            "(default for the stdlib)")
    tests.add_argument("--no-heldout-tests", dest="heldout_tests", action="store_false",
                       help="treat test folders like any other file")
    prep.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    m = prepare_corpus(args.source, args.out, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                       seed=args.seed, text_field=args.text_field, heldout_tests=args.heldout_tests,
                       progress=True)
    summary = {name: {"documents": s["n_documents"], "tokens": s["n_tokens"]} for name, s in m["splits"].items()}
    print(json.dumps({"out": args.out, "tokenizer": m["tokenizer_name"], "vocab_size": m["vocab_size"],
                      "splits": summary}, indent=1))
    return 0
