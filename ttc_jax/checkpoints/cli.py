"""`ttc convert`: the command line of `ttc_jax.checkpoints.conversion`."""

from __future__ import annotations

from ttc_jax.checkpoints.conversion import SOURCES, convert, export


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert checkpoints: published TTT formats <-> ttc-jax",
                       description="--from ttt-lm-jax|safetensors SRC DST: a published checkpoint to a ttc-jax "
                                   "folder. --to safetensors SRC DST: a ttc-jax checkpoint (name or folder) to the "
                                   "ttt-lm-pytorch port's layout.")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source", choices=SOURCES, help="format of SRC")
    way.add_argument("--to", dest="target", choices=("safetensors",), help="export a ttc-jax checkpoint")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--ttt-base-lr", type=float, default=None,
                   help="ttt-lm-jax: inner base lr (default: 1.0 TTT-Linear, 0.1 TTT-MLP, as published)")
    p.add_argument("--rope-theta", type=float, default=None, help="ttt-lm-jax: RoPE theta (default 10000)")
    p.add_argument("--norm-eps", type=float, default=None, help="ttt-lm-jax: RMSNorm epsilon (default 1e-6)")
    p.add_argument("--max-seq-len", type=int, default=None, help="ttt-lm-jax: maximum length (default 2048)")
    p.add_argument("--dtype", default="float32", help="--to safetensors: float32 (default), bfloat16 or float16")
    p.set_defaults(func=_run)


def _run(args) -> int:
    options = {k: v for k, v in (("ttt_base_lr", args.ttt_base_lr), ("rope_theta", args.rope_theta),
                                 ("norm_eps", args.norm_eps), ("max_seq_len", args.max_seq_len)) if v is not None}
    if args.target:
        if options:
            raise ValueError(f"options {sorted(options)} apply to --from ttt-lm-jax only")
        out = export(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite)
    else:
        out = convert(args.src, args.dst, source=args.source, overwrite=args.overwrite, **options)
    print(f"wrote {out}")
    return 0
