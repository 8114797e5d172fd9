"""One mini-batch of the dual form, written for kernel bodies (2-D tiles, no transposes, float32).

For a learner of L dense layers with weights (w1, b1, ..., wL, bL) at the start of the mini-batch
and K tokens q, k, v [K, F], lr [K, 1], row factors s [K, 1]:

    G_L = LN-backward(Z_L(k), v - k),   G_l = (G_{l+1} W_{l+1}^T) * gelu'(Z_l(k))
    Gl  = lr * G_l
    Zbar_l = X_l(q) W_l + b_l - s * (tril(X_l(q) X_l(k)^T + 1) @ Gl)     (the causal eta products)
    z = q + LN(Zbar_L),   W_l' = W_l - s_K X_l(k)^T Gl,   b_l' = b_l - s_K sum_rows(Gl)

which equals `Learner.segment` + `commit` in ttc_jax.ttt.learners (eta[i, j] = s_i lr_j, j <= i).
`step` is assembled from `inner_parts` (the k-path) and `q_path` (the causal products), which
`minibatch_vjp.step_fwd` reuses to keep what its hand-written backward needs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ttc_jax.ttt.learners import gelu_tanh, gelu_tanh_grad, layer_norm, ln_l2_grad

@dataclasses.dataclass(frozen=True)
class Dots:
    """The 2-D products, float32 accumulation; operands float32 (precision HIGHEST) or bfloat16."""

    operand: str = "float32"

    def _dot(self, a, b, dims):
        if self.operand == "float32":
            return jax.lax.dot_general(a, b, (dims, ((), ())), precision=jax.lax.Precision.HIGHEST,
                                       preferred_element_type=jnp.float32)
        a, b = a.astype(self.operand), b.astype(self.operand)
        return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)

    def mm(self, a, b):
        """a @ b."""
        return self._dot(a, b, ((1,), (0,)))

    def mm_nt(self, a, b):
        """a @ b^T."""
        return self._dot(a, b, ((1,), (1,)))

    def mm_tn(self, a, b):
        """a^T @ b."""
        return self._dot(a, b, ((0,), (0,)))


F32 = Dots("float32")


def flops_per_token(widths, K: int) -> float:
    """Matmul FLOPs per token of `step` for dense layers widths = [(a1, b1), ...]: per layer a -> b,
    6ab (k-path, q-path, update) + 2K(a + b) (the causal K x K products), + 2ab per backpropagated layer."""
    return float(sum(6 * a * b + 2 * K * (a + b) + (2 * a * b if i else 0) for i, (a, b) in enumerate(widths)))


def causal_ones(n: int):
    """[n, n] float32 lower-triangular ones (j <= i)."""
    i = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
    j = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    return jnp.where(j <= i, 1.0, 0.0).astype(jnp.float32)


def inner_parts(ws, k, v, ln_scale, ln_bias, eps, dots: Dots = F32):
    """The k-path at ws = (w1, b1, ...): layer inputs X_l(k), pre-activations Z_l,
    H_l = G_{l+1} W_{l+1}^T (l < L; G_l = H_l * gelu'(Z_l)) and lr-free output gradients G_l."""
    n_layers = len(ws) // 2
    xs, zs, x = [], [], k
    for i in range(n_layers):
        xs.append(x)
        z = dots.mm(x, ws[2 * i]) + ws[2 * i + 1]
        zs.append(z)
        x = gelu_tanh(z) if i < n_layers - 1 else z
    g = ln_l2_grad(zs[-1], v - k, ln_scale, ln_bias, eps)
    gs, hs = [g], []
    for i in range(n_layers - 1, 0, -1):
        h = dots.mm_nt(g, ws[2 * i])
        g = h * gelu_tanh_grad(zs[i - 1])
        hs.insert(0, h)
        gs.insert(0, g)
    return xs, zs, hs, gs


def inner_grads(ws, k, v, ln_scale, ln_bias, eps, dots: Dots = F32):
    """Layer inputs X_l(k) and lr-free output gradients G_l at ws = (w1, b1, ...)."""
    xs, _, _, gs = inner_parts(ws, k, v, ln_scale, ln_bias, eps, dots)
    return xs, gs


def q_path(ws, q, xs, gls, s, dots: Dots = F32):
    """The q-path with the causal eta products: per layer the input Xq_l, the masked
    A_l = tril(Xq_l X_l^T + 1), P_l = A_l Gl_l and Zbar_l = Xq_l W_l + b_l - s * P_l."""
    n_layers = len(ws) // 2
    mask = causal_ones(q.shape[0])
    xqs, amats, ps, zbs, x = [], [], [], [], q
    for i in range(n_layers):
        xqs.append(x)
        a = (dots.mm_nt(x, xs[i]) + 1.0) * mask
        p = dots.mm(a, gls[i])
        z = dots.mm(x, ws[2 * i]) + ws[2 * i + 1] - s * p
        amats.append(a)
        ps.append(p)
        zbs.append(z)
        x = gelu_tanh(z) if i < n_layers - 1 else z
    return xqs, amats, ps, zbs


def _commit(ws, xs, gls, s_last, dots):
    new = []
    for i, (x, gl) in enumerate(zip(xs, gls)):
        new.append(ws[2 * i] - s_last * dots.mm_tn(x, gl))
        new.append(ws[2 * i + 1] - s_last * gl.sum(0, keepdims=True))
    return tuple(new)


def update(ws, k, v, lr, s, ln_scale, ln_bias, eps, dots: Dots = F32):
    """The weights after the mini-batch (the state chain only, no output)."""
    xs, gs = inner_grads(ws, k, v, ln_scale, ln_bias, eps, dots)
    return _commit(ws, xs, [lr * g for g in gs], s[-1:, :], dots)


def step(ws, q, k, v, lr, s, ln_scale, ln_bias, eps, dots: Dots = F32):
    """(z [K, F], weights after the mini-batch) for one full mini-batch."""
    xs, _, _, gs = inner_parts(ws, k, v, ln_scale, ln_bias, eps, dots)
    gls = [lr * g for g in gs]
    zbs = q_path(ws, q, xs, gls, s, dots)[3]
    out = q + layer_norm(zbs[-1], ln_scale, ln_bias, eps)
    return out, _commit(ws, xs, gls, s[-1:, :], dots)


def decode_token(ws, accs, q, k, v, lr, s_pos, done, ln_scale, ln_bias, eps, dots: Dots = F32):
    """One token of one sequence: rows [1, F], weights 2-D, lr, s_pos, done [1, 1].

    Adds lr * grad (at the mini-batch's start weights ws) to accs, outputs with ws - s_pos * accs,
    and commits (ws <- ws - s_pos * accs, accs <- 0) where done (1.0 at the mini-batch's last token).
    Uses only the 2-D products of the prefill kernel (the outer products are [1, a]^T [1, b]).
    """
    n_layers = len(ws) // 2
    xs, gs = inner_grads(ws, k, v, ln_scale, ln_bias, eps, dots)
    new_accs = []
    for i in range(n_layers):
        gl = lr * gs[i]
        new_accs += [accs[2 * i] + dots.mm_tn(xs[i], gl), accs[2 * i + 1] + gl]
    cur = tuple(w - s_pos * a for w, a in zip(ws, new_accs))
    x = q
    for i in range(n_layers):
        z = dots.mm(x, cur[2 * i]) + cur[2 * i + 1]
        x = gelu_tanh(z) if i < n_layers - 1 else z
    out = q + layer_norm(x, ln_scale, ln_bias, eps)
    commit = done > 0.5
    new_ws = tuple(jnp.where(commit, c, w) for c, w in zip(cur, ws))
    new_accs = tuple(jnp.where(commit, jnp.zeros_like(a), a) for a in new_accs)
    return out, new_ws, new_accs


def decode_rows(ws, accs, q, k, v, lr, s_pos, done, ln_scale, ln_bias, eps, dots: Dots = F32):
    """`decode_token` over n sequences (plain JAX, outside kernels): rows [n, F], weights [n, a, b], lr [n, 1]."""
    def one(w, a, q, k, v, lr, g, b):
        return decode_token(w, a, q[None], k[None], v[None], lr[None], s_pos, done, g[None], b[None], eps, dots)

    z, new_ws, new_accs = jax.vmap(one)(ws, accs, q, k, v, lr, ln_scale, ln_bias)
    return z[:, 0], new_ws, new_accs
