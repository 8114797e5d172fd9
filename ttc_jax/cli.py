"""The `ttc` command line."""

from __future__ import annotations

import argparse
import sys

from ttc_jax import demo
from ttc_jax.checkpoints import cli as convert_cli
from ttc_jax.data import cli as data_cli
from ttc_jax.kernels import bench as kernels_bench
from ttc_jax.pipeline import cli as solve_cli
from ttc_jax.scaling import cli as scale_cli
from ttc_jax.search import cli as search_cli
from ttc_jax.train import cli as train_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttc", description="ttc-jax: test-time compute in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.register(sub)
    convert_cli.register(sub)
    kernels_bench.register(sub)
    scale_cli.register(sub)
    search_cli.register(sub)
    data_cli.register(sub)
    train_cli.register(sub)
    solve_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad input: one line, non-zero exit
        print(f"ttc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
