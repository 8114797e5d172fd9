"""Converters on fixtures written in each foreign format from known random arrays: the converted
model's logits equal those of a model built directly from the same arrays; round trips are exact;
a converted model decodes token by token equal to its full pass; bad input fails cleanly."""

import json
import pickle
from pathlib import Path

import flax.serialization
import jax.numpy as jnp
import ml_dtypes
import msgpack
import numpy as np
import pytest
from conftest import forward, golden_dir, random_arrays, rel_l2, set_unscanned, tokens
from flax import nnx
from safetensors.numpy import save_file

import ttc_jax
from ttc_jax.checkpoints import (convert, export_safetensors, load_safetensors, load_ttt_lm_jax,
                                 model_params, save_pretrained)
from ttc_jax.cli import main as cli_main
from ttc_jax.nn import HybridLM, ModelConfig

V, D, H, Fh, K, W, L = 48, 32, 2, 40, 8, 4, 2
F = D // H


# --- a ttt-lm-jax stream written here ----------------------------------------------------------------------------

def jax_fixture_arrays(seed=0):
    """Official names of an untied TTT-MLP 'TTTMLP' model (q/k convs + gate) without pre-conv."""
    shapes = {"model/wte/embedding": (V, D), "model/ln_f/kernel": (D,), "lm_head/kernel": (D, V)}
    for i in range(L):
        p = f"model/h/{i}/"
        s = p + "seq_modeling_block/"
        shapes.update({
            p + "seq_norm/kernel": (D,), p + "ffn_norm/kernel": (D,),
            p + "feed_forward/w1/kernel": (D, Fh), p + "feed_forward/w3/kernel": (D, Fh),
            p + "feed_forward/w2/kernel": (Fh, D),
            s + "wq/kernel": (D, D), s + "wv/kernel": (D, D), s + "wo/kernel": (D, D), s + "wg/kernel": (D, D),
            s + "conv_q/kernel": (W, 1, D), s + "conv_q/bias": (D,), s + "conv_k/kernel": (W, 1, D),
            s + "conv_k/bias": (D,), s + "learnable_token_idx": (K,), s + "learnable_ttt_lr/kernel": (H, D, 1),
            s + "learnable_ttt_lr/bias": (H, 1), s + "ttt_norm/scale": (H, F), s + "ttt_norm/bias": (H, F),
            s + "ttt_dense_0": (H, F, 4 * F), s + "ttt_bias_0": (H, 1, 4 * F), s + "ttt_dense_1": (H, 4 * F, F),
            s + "ttt_bias_1": (H, 1, F), s + "post_norm/scale": (D,), s + "post_norm/bias": (D,)})
    return random_arrays(shapes, seed)


def write_stream(path: Path, arrays: dict, dtype=np.float32, prefix=("params", "params"), extra=True):
    """The official StreamingCheckpointer layout: msgpack (key path, flax to_bytes(array)) pairs."""
    packer = msgpack.Packer()
    with open(path, "wb") as f:
        if extra:
            f.write(packer.pack((["step"], flax.serialization.to_bytes(np.int32(1234)))))
        for k, v in arrays.items():
            key = list(prefix) + (_official_split(k) if "seq_modeling_block/" in k else k.split("/"))
            f.write(packer.pack((key, flax.serialization.to_bytes(v.astype(dtype)))))
        if extra:  # an optimizer entry the reader must skip
            f.write(packer.pack((["opt_state", "1", "0", "mu", "params", "model", "wte", "embedding"],
                                 flax.serialization.to_bytes(np.ones((V, D), dtype)))))
    return path


def _official_split(k: str) -> list[str]:
    """Official flax path: 'learnable_ttt_lr/kernel' and 'ttt_norm/scale' are single keys."""
    head, _, leaf = k.partition("seq_modeling_block/")
    parts = head.rstrip("/").split("/") + ["seq_modeling_block"]
    if leaf.startswith(("learnable_ttt_lr/", "ttt_norm/")):
        return parts + [leaf]
    return parts + leaf.split("/")


def direct_from_jax_arrays(a: dict) -> HybridLM:
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=L, n_heads=H, ffn_dim=Fh, layer_pattern=("ttt_mlp",),
                      backbone="mamba", pre_conv=False, mini_batch_size=K, tie_word_embeddings=False,
                      scan_layers=False)
    ours = {"embed.embedding": a["model/wte/embedding"], "ln_f.scale": a["model/ln_f/kernel"],
            "lm_head.kernel": a["lm_head/kernel"]}
    for i in range(L):
        p, s, o = f"model/h/{i}/", f"model/h/{i}/seq_modeling_block/", f"layers.{i}."
        ours.update({
            o + "seq_norm.scale": a[p + "seq_norm/kernel"], o + "ffn_norm.scale": a[p + "ffn_norm/kernel"],
            o + "feed_forward.w1.kernel": a[p + "feed_forward/w1/kernel"],
            o + "feed_forward.w3.kernel": a[p + "feed_forward/w3/kernel"],
            o + "feed_forward.w2.kernel": a[p + "feed_forward/w2/kernel"]})
        m = o + "seq_modeling_block."
        for n in ("wq", "wv", "wo", "wg"):
            ours[m + n + ".kernel"] = a[s + n + "/kernel"]
        for n in ("conv_q", "conv_k"):
            ours[m + n + ".kernel"] = a[s + n + "/kernel"][:, 0, :]
            ours[m + n + ".bias"] = a[s + n + "/bias"]
        ours.update({m + "learnable_token_idx": a[s + "learnable_token_idx"],
                     m + "ttt_lr_weight": a[s + "learnable_ttt_lr/kernel"][:, :, 0],
                     m + "ttt_lr_bias": a[s + "learnable_ttt_lr/bias"][:, 0],
                     m + "ttt_norm_scale": a[s + "ttt_norm/scale"], m + "ttt_norm_bias": a[s + "ttt_norm/bias"],
                     m + "fast_weights.w1": a[s + "ttt_dense_0"], m + "fast_weights.b1": a[s + "ttt_bias_0"],
                     m + "fast_weights.w2": a[s + "ttt_dense_1"], m + "fast_weights.b2": a[s + "ttt_bias_1"],
                     m + "post_norm.scale": a[s + "post_norm/scale"], m + "post_norm.bias": a[s + "post_norm/bias"]})
    return set_unscanned(HybridLM(cfg, rngs=nnx.Rngs(0)), ours)


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(ml_dtypes.bfloat16, marks=pytest.mark.slow)])
def test_ttt_lm_jax_fixture_equals_direct_model(tmp_path, dtype):
    arrays = jax_fixture_arrays()
    path = write_stream(tmp_path / "streaming_train_state_1234", arrays, dtype)
    model, cfg, info = load_ttt_lm_jax(tmp_path)  # the folder: finds the one stream file
    assert info["step"] == 1234 and info["skipped"] == 1 and info["file"] == str(path)
    assert not cfg.tie_word_embeddings and not cfg.has_pre_conv and cfg.has_qk_conv and cfg.has_gate
    assert cfg.ttt_base_lr is None and cfg.base_lr("ttt_mlp") == 0.1  # the official default for TTT-MLP
    rounded = {k: v.astype(dtype).astype(np.float32) for k, v in arrays.items()}
    t = tokens(V, T=19)
    np.testing.assert_allclose(forward(model, t), forward(direct_from_jax_arrays(rounded), t), rtol=1e-5, atol=1e-5)


def test_streaming_params_file_and_options(tmp_path):
    """The params-only stream (no prefix, no optimizer) and the options the shapes cannot tell."""
    write_stream(tmp_path / "streaming_params", jax_fixture_arrays(), prefix=(), extra=False)
    model, cfg, info = load_ttt_lm_jax(tmp_path / "streaming_params", ttt_base_lr=0.3, rope_theta=500.0,
                                       norm_eps=1e-5, max_seq_len=128)
    assert info["step"] is None and info["skipped"] == 0
    assert (cfg.ttt_base_lr, cfg.rope_theta, cfg.norm_eps, cfg.max_seq_len) == (0.3, 500.0, 1e-5, 128)


# --- a port folder written here ------------------------------------------------------------------------------------

def port_fixture_arrays(seed=1):
    """Port names of an untied TTT-MLP with share_qk and pre_conv on, use_gate off (a mix)."""
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        s = p + "seq_modeling_block."
        shapes.update({
            p + "conv.norm.weight": (D,), p + "conv.conv.weight": (D, 1, W), p + "conv.conv.bias": (D,),
            p + "seq_norm.weight": (D,), p + "ffn_norm.weight": (D,),
            p + "mlp.gate_proj.weight": (Fh, D), p + "mlp.up_proj.weight": (Fh, D), p + "mlp.down_proj.weight": (D, Fh),
            s + "q_proj.weight": (D, D), s + "v_proj.weight": (D, D), s + "o_proj.weight": (D, D),
            s + "conv_q.weight": (D, 1, W), s + "conv_q.bias": (D,), s + "conv_k.weight": (D, 1, W),
            s + "conv_k.bias": (D,), s + "learnable_token_idx": (K,), s + "learnable_ttt_lr_weight": (H, 1, D),
            s + "learnable_ttt_lr_bias": (H, 1), s + "ttt_norm_weight": (H, F), s + "ttt_norm_bias": (H, F),
            s + "W1": (H, F, 4 * F), s + "b1": (H, 1, 4 * F), s + "W2": (H, 4 * F, F), s + "b2": (H, 1, F),
            s + "post_norm.weight": (D,), s + "post_norm.bias": (D,)})
    return random_arrays(shapes, seed)


PORT_CONFIG = {"model_type": "ttt", "vocab_size": V, "hidden_size": D, "intermediate_size": Fh,
               "num_hidden_layers": L, "num_attention_heads": H, "mini_batch_size": K, "ttt_layer_type": "mlp",
               "share_qk": True, "pre_conv": True, "tie_word_embeddings": False}  # ttt_base_lr missing: 1.0


def write_port(folder: Path, arrays: dict, config: dict = PORT_CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def direct_from_port_arrays(a: dict) -> HybridLM:
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=L, n_heads=H, ffn_dim=Fh, layer_pattern=("ttt_mlp",),
                      backbone="transformer", pre_conv=True, share_qk=True, use_gate=False, mini_batch_size=K,
                      tie_word_embeddings=False, ttt_base_lr=1.0, scan_layers=False)
    ours = {"embed.embedding": a["model.embed_tokens.weight"], "ln_f.scale": a["model.norm.weight"],
            "lm_head.kernel": a["lm_head.weight"].T}
    for i in range(L):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        s, m = p + "seq_modeling_block.", o + "seq_modeling_block."
        ours.update({
            o + "conv.conv_norm.scale": a[p + "conv.norm.weight"],
            o + "conv.conv1.kernel": a[p + "conv.conv.weight"][:, 0, :].T, o + "conv.conv1.bias": a[p + "conv.conv.bias"],
            o + "seq_norm.scale": a[p + "seq_norm.weight"], o + "ffn_norm.scale": a[p + "ffn_norm.weight"],
            o + "feed_forward.w1.kernel": a[p + "mlp.gate_proj.weight"].T,
            o + "feed_forward.w3.kernel": a[p + "mlp.up_proj.weight"].T,
            o + "feed_forward.w2.kernel": a[p + "mlp.down_proj.weight"].T,
            m + "wq.kernel": a[s + "q_proj.weight"].T, m + "wv.kernel": a[s + "v_proj.weight"].T,
            m + "wo.kernel": a[s + "o_proj.weight"].T,
            m + "conv_q.kernel": a[s + "conv_q.weight"][:, 0, :].T, m + "conv_q.bias": a[s + "conv_q.bias"],
            m + "conv_k.kernel": a[s + "conv_k.weight"][:, 0, :].T, m + "conv_k.bias": a[s + "conv_k.bias"],
            m + "learnable_token_idx": a[s + "learnable_token_idx"],
            m + "ttt_lr_weight": a[s + "learnable_ttt_lr_weight"][:, 0, :],
            m + "ttt_lr_bias": a[s + "learnable_ttt_lr_bias"][:, 0],
            m + "ttt_norm_scale": a[s + "ttt_norm_weight"], m + "ttt_norm_bias": a[s + "ttt_norm_bias"],
            m + "fast_weights.w1": a[s + "W1"], m + "fast_weights.b1": a[s + "b1"],
            m + "fast_weights.w2": a[s + "W2"], m + "fast_weights.b2": a[s + "b2"],
            m + "post_norm.scale": a[s + "post_norm.weight"], m + "post_norm.bias": a[s + "post_norm.bias"]})
    return set_unscanned(HybridLM(cfg, rngs=nnx.Rngs(0)), ours)


@pytest.fixture(scope="module")
def port_fixture(tmp_path_factory):
    arrays = port_fixture_arrays()
    folder = write_port(tmp_path_factory.mktemp("port") / "mixed", arrays)
    model, cfg, _ = load_safetensors(folder)
    return folder, arrays, model, cfg, forward(model, tokens(V, T=19))


def test_port_fixture_equals_direct_model(port_fixture):
    folder, arrays, model, cfg, logits = port_fixture
    assert cfg.ttt_base_lr == 1.0  # the port's TTTConfig default applies to TTT-MLP too
    assert (cfg.has_pre_conv, cfg.has_qk_conv, cfg.has_gate, cfg.tie_word_embeddings) == (True, True, False, False)
    np.testing.assert_allclose(logits, forward(direct_from_port_arrays(arrays), tokens(V, T=19)), rtol=1e-5,
                               atol=1e-5)


def test_export_import_round_trip_is_exact(port_fixture, tmp_path):
    folder, arrays, model, cfg, _ = port_fixture
    out = export_safetensors(model, cfg, tmp_path / "exported")
    from safetensors.numpy import load_file

    again = load_file(str(out / "model.safetensors"))
    assert sorted(again) == sorted(arrays)
    for k in arrays:
        np.testing.assert_array_equal(again[k], arrays[k], err_msg=k)
    model2, cfg2, _ = load_safetensors(out)
    assert cfg2 == cfg
    for k, v in model_params(model).items():
        np.testing.assert_array_equal(model_params(model2)[k], v, err_msg=k)


def test_save_load_round_trip_is_exact_and_dtype(port_fixture, tmp_path):
    _, _, model, cfg, logits = port_fixture
    path = save_pretrained(model, cfg, tmp_path / "ours", tokenizer="byte", metadata={"note": "test"})
    assert {p.name for p in path.iterdir()} == {"config.json", "params", "README.md"}
    loaded, cfg2, tok = ttc_jax.from_pretrained(path, with_tokenizer=True)
    assert cfg2 == cfg and tok is not None and tok.decode(tok.encode("def f():")) == "def f():"
    want = model_params(model)
    got = model_params(loaded)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    t = tokens(V, T=19)
    np.testing.assert_array_equal(forward(loaded, t), logits)
    half, cfg_half = ttc_jax.from_pretrained(path, dtype="bfloat16")
    assert cfg_half.dtype == "bfloat16"
    assert all(v.dtype == jnp.bfloat16 for v in model_params(half).values())
    assert rel_l2(forward(half, t), logits) < 5e-2


def test_cli_convert_and_export(tmp_path, capsys):
    d = golden_dir("ttt-lm-pytorch", "ttt_linear_base")
    assert cli_main(["convert", "--from", "safetensors", str(d), str(tmp_path / "ours")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["convert", "--to", "safetensors", str(tmp_path / "ours"), str(tmp_path / "port")]) == 0
    from safetensors.numpy import load_file

    orig, back = load_file(str(d / "model.safetensors")), load_file(str(tmp_path / "port" / "model.safetensors"))
    assert sorted(orig) == sorted(back)  # tied: no lm_head.weight, as the port saves it
    for k in orig:
        np.testing.assert_array_equal(back[k], orig[k], err_msg=k)
    port_cfg = json.loads((tmp_path / "port" / "config.json").read_text())
    golden_cfg = json.loads((d / "config.json").read_text())
    for k in ("hidden_size", "num_hidden_layers", "ttt_layer_type", "ttt_base_lr", "pre_conv", "share_qk",
              "use_gate", "mini_batch_size", "vocab_size", "intermediate_size"):
        assert port_cfg[k] == golden_cfg[k], k


def test_converted_model_decodes_like_its_full_pass():
    d = golden_dir("ttt-lm-pytorch", "ttt_linear")  # q/k convs, gate, pre-conv; T=40 with K=16
    model, cfg, _ = load_safetensors(d)
    t = np.load(d / "tokens.npy")[:, :20]
    full = forward(model, t)
    step = nnx.jit(lambda m, x, c: m(x, cache=c))
    logits, cache = step(model, t[:, :13], model.init_cache(batch_size=2, cache_size=32))
    outs = [logits]
    for i in range(13, 20):  # crosses the mini-batch boundary at 16
        logits, cache = step(model, t[:, i:i + 1], cache)
        outs.append(logits)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    return write_stream(tmp_path_factory.mktemp("stream") / "streaming_train_state", jax_fixture_arrays())


def _fails(tmp_path, src, source, match, **kw):
    dst = tmp_path / "dst"
    with pytest.raises(ValueError, match=match):
        convert(src, dst, source=source, **kw)
    assert not dst.exists() and not list(tmp_path.glob(".dst.tmp-*"))


def test_truncated_stream(tmp_path, stream):
    data = stream.read_bytes()
    for cut in (len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}"
        bad.write_bytes(data[:cut])
        _fails(tmp_path, bad, "ttt-lm-jax", "truncated|ends inside|not a complete")


def test_corrupted_stream(tmp_path, stream):
    data = bytearray(stream.read_bytes())
    data[0] = 0xC1  # a byte msgpack never uses
    bad = tmp_path / "c1"
    bad.write_bytes(bytes(data))
    _fails(tmp_path, bad, "ttt-lm-jax", "corrupted|not a complete")
    bad.write_bytes(stream.read_bytes() + b"\x00\x01garbage")
    _fails(tmp_path, bad, "ttt-lm-jax", "not a complete")


def test_missing_files(tmp_path):
    _fails(tmp_path, tmp_path / "nope", "ttt-lm-jax", "no such file")
    _fails(tmp_path, tmp_path / "nope", "safetensors", "no such file")
    (tmp_path / "empty").mkdir()
    _fails(tmp_path, tmp_path / "empty", "ttt-lm-jax", "expected one streaming")
    _fails(tmp_path, tmp_path / "empty", "safetensors", "no model.safetensors")
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        ttc_jax.from_pretrained(str(tmp_path / "nope"))


def test_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name, source in (("streaming_train_state", "ttt-lm-jax"), ("model.safetensors", "safetensors")):
        folder = tmp_path / source
        folder.mkdir()
        (folder / name).write_bytes(pickle.dumps({"params": Trap()}, protocol=4))
        (folder / "config.json").write_text(json.dumps(PORT_CONFIG))
        _fails(tmp_path, folder, source, "pickle")
    assert not marker.exists()


def test_unknown_keys_and_wrong_shapes(tmp_path):
    arrays = port_fixture_arrays()
    write_port(tmp_path / "extra", {**arrays, "model.layers.0.seq_modeling_block.mystery": np.ones(3, np.float32)})
    _fails(tmp_path, tmp_path / "extra", "safetensors", "unknown key.*mystery")
    bad = dict(arrays)
    bad["model.layers.1.seq_modeling_block.W1"] = np.ones((H, F, 3 * F), np.float32)
    write_port(tmp_path / "shape", bad)
    _fails(tmp_path, tmp_path / "shape", "safetensors", r"W1 has shape \(2, 16, 48\); expected \(2, 16, 64\)")
    missing = dict(arrays)
    del missing["model.layers.0.conv.conv.bias"]
    write_port(tmp_path / "missing", missing)
    _fails(tmp_path, tmp_path / "missing", "safetensors", "missing .*conv.conv.bias")
    write_port(tmp_path / "arch", arrays, {**PORT_CONFIG, "share_qk": False})  # config says k_proj, file has convs
    _fails(tmp_path, tmp_path / "arch", "safetensors", "unknown key|missing")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    (tmp_path / "garbage" / "config.json").write_text(json.dumps(PORT_CONFIG))
    _fails(tmp_path, tmp_path / "garbage", "safetensors", "not a readable safetensors")
    jax_arrays = jax_fixture_arrays()
    jax_arrays["model/h/1/seq_modeling_block/ttt_dense_1"] = np.ones((H, 4 * F, F + 1), np.float32)
    write_stream(tmp_path / "streaming_params", jax_arrays, prefix=(), extra=False)
    _fails(tmp_path, tmp_path / "streaming_params", "ttt-lm-jax", "ttt_dense_1 has shape")


def test_our_checkpoint_architecture_mismatch_and_corruption(port_fixture, tmp_path):
    _, _, model, cfg, _ = port_fixture
    path = save_pretrained(model, cfg, tmp_path / "ours")
    doc = json.loads((path / "config.json").read_text())
    doc["model"]["ffn_dim"] = 2 * Fh
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="feed_forward.*shape"):
        ttc_jax.from_pretrained(path)
    doc["model"]["ffn_dim"] = Fh
    doc["model"]["tie_word_embeddings"] = True
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="do not match the architecture"):
        ttc_jax.from_pretrained(path)
    doc["model"]["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(doc))
    for f in (path / "params").rglob("*"):  # damage every data file of the array store
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(ValueError, match="corrupted|unreadable"):
        ttc_jax.from_pretrained(path)
    (path / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        ttc_jax.from_pretrained(path)


def test_relative_paths(port_fixture, tmp_path, monkeypatch):
    _, _, model, cfg, _ = port_fixture
    monkeypatch.chdir(tmp_path)
    save_pretrained(model, cfg, "rel/ckpt")
    assert ttc_jax.from_pretrained("rel/ckpt")[1] == cfg


def test_failed_save_keeps_the_existing_checkpoint(port_fixture, tmp_path, monkeypatch):
    _, _, model, cfg, _ = port_fixture
    path = save_pretrained(model, cfg, tmp_path / "ours")
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    with pytest.raises(ValueError, match="already exists"):
        save_pretrained(model, cfg, path)
    import ttc_jax.checkpoints.store as store

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_default_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(model, cfg, path, overwrite=True)
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert not list(tmp_path.glob(".ours.tmp-*"))
    ttc_jax.from_pretrained(path)  # still loads


def test_names_resolve_to_shipped_checkpoints(port_fixture, tmp_path, monkeypatch):
    _, _, model, cfg, _ = port_fixture
    save_pretrained(model, cfg, tmp_path / "shipped" / "tiny-mix")
    monkeypatch.setenv("TTC_CHECKPOINTS", str(tmp_path / "shipped"))
    loaded, cfg2 = ttc_jax.from_pretrained("tiny-mix")
    assert cfg2 == cfg
    with pytest.raises(ValueError, match=r"unknown model name='ttt-7b'; known names: \['tiny-mix'\]"):
        ttc_jax.from_pretrained("ttt-7b")
    assert cli_main(["convert", "--to", "safetensors", "ttt-7b", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_export_refuses_what_the_port_cannot_express(tmp_path):
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=H, ffn_dim=Fh, mini_batch_size=K,
                      layer_pattern=("ttt_linear", "attention"))
    model = nnx.eval_shape(lambda: HybridLM(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no attention layers"):
        export_safetensors(model, cfg, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_train_workdir_to_model(port_fixture, tmp_path):
    """A `ttc train` workdir: config.json {"model": ...} + orbax checkpoints/<step>/state with params."""
    import orbax.checkpoint as ocp

    from ttc_jax.checkpoints import load_train_workdir
    from ttc_jax.checkpoints.store import config_to_dict

    _, _, model, cfg, logits = port_fixture
    wd = tmp_path / "run"
    (wd / "checkpoints" / "7").mkdir(parents=True)
    (wd / "config.json").write_text(json.dumps({"preset": "x", "model": config_to_dict(cfg), "train": {}}))
    state = {"step": np.int32(7), "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
             "opt_state": {"mu": np.ones(3, np.float32)}}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(wd / "checkpoints" / "7" / "state", state)
    (wd / "checkpoints" / "7" / "_CHECKPOINT_METADATA").write_text("{}")
    loaded, cfg2, info = load_train_workdir(wd)
    assert cfg2 == cfg and info["step"] == 7
    for k, v in model_params(model).items():
        np.testing.assert_array_equal(model_params(loaded)[k], v, err_msg=k)
    with pytest.raises(ValueError, match="steps \\[7\\]"):
        load_train_workdir(wd, step=3)
    with pytest.raises(ValueError, match="no config.json"):
        load_train_workdir(tmp_path)
