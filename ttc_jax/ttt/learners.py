"""Inner learners of TTT layers: the fast-weight model f, its loss, its dual form.

Everything here acts on one head of one example: tokens are [r, F] rows, fast
weights are {"w1": [F, Fh], "b1": [1, Fh], ...}. Callers vmap over heads and
batch. A learner is a stack of dense layers with gelu_tanh between them:
TTT-Linear is one F -> F layer, TTT-MLP is F -> 4F -> F.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(_GELU_C * (x + 0.044715 * x**3)))


def gelu_tanh_grad(x):
    """d gelu_tanh(x) / dx."""
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)


def layer_norm(z, scale, bias, eps):
    """LayerNorm over the last axis with learned scale and bias."""
    mu = z.mean(-1, keepdims=True)
    var = ((z - mu) ** 2).mean(-1, keepdims=True)
    return (z - mu) * jax.lax.rsqrt(var + eps) * scale + bias


def ln_l2_loss(z, target, scale, bias, eps):
    """Per-row inner loss 1/2 ||LN(z) - target||^2, shape z.shape[:-1]."""
    return 0.5 * ((layer_norm(z, scale, bias, eps) - target) ** 2).sum(-1)


def ln_l2_grad(z, target, scale, bias, eps):
    """d ln_l2_loss / dz, row by row (the LayerNorm backward written out)."""
    f = z.shape[-1]
    mu = z.mean(-1, keepdims=True)
    inv_std = jax.lax.rsqrt(((z - mu) ** 2).mean(-1, keepdims=True) + eps)
    x_hat = (z - mu) * inv_std
    g_hat = (x_hat * scale + bias - target) * scale
    return (f * g_hat - g_hat.sum(-1, keepdims=True)
            - x_hat * (g_hat * x_hat).sum(-1, keepdims=True)) * inv_std / f


@dataclasses.dataclass(frozen=True)
class Learner:
    """A fast-weight model: `n_layers` dense layers, hidden width `expansion` * F."""

    name: str
    n_layers: int
    expansion: int

    def weight_shapes(self, n_heads: int, head_dim: int) -> dict[str, tuple[int, ...]]:
        widths = [head_dim] + [self.expansion * head_dim] * (self.n_layers - 1) + [head_dim]
        shapes = {}
        for i in range(self.n_layers):
            shapes[f"w{i + 1}"] = (n_heads, widths[i], widths[i + 1])
            shapes[f"b{i + 1}"] = (n_heads, 1, widths[i + 1])
        return shapes

    # -- primal pieces -------------------------------------------------------

    def apply(self, w, x):
        """f(x; w) for rows x [r, F]."""
        for i in range(self.n_layers):
            x = x @ w[f"w{i + 1}"] + w[f"b{i + 1}"]
            if i < self.n_layers - 1:
                x = gelu_tanh(x)
        return x

    def loss(self, w, k, v, ln_scale, ln_bias, eps):
        """Per-row inner loss 1/2 ||LN(f(k; w)) - (v - k)||^2, shape [r]."""
        return ln_l2_loss(self.apply(w, k), v - k, ln_scale, ln_bias, eps)

    # -- dual form -----------------------------------------------------------

    def _forward_and_grads(self, w, k, v, ln_scale, ln_bias, eps):
        """Layer inputs X_l and output gradients G_l = dl/dZ_l at w, per row."""
        xs, zs = [], []
        x = k
        for i in range(self.n_layers):
            xs.append(x)
            z = x @ w[f"w{i + 1}"] + w[f"b{i + 1}"]
            zs.append(z)
            x = gelu_tanh(z) if i < self.n_layers - 1 else z
        g = ln_l2_grad(zs[-1], v - k, ln_scale, ln_bias, eps)
        gs = [g]
        for i in range(self.n_layers - 1, 0, -1):
            g = (g @ w[f"w{i + 1}"].T) * gelu_tanh_grad(zs[i - 1])
            gs.insert(0, g)
        return xs, gs, zs[-1]

    def segment(self, w, acc, q, k, v, lr, s, ln_scale, ln_bias, eps, *, stats=False):
        """Dual form over r consecutive tokens of one mini-batch.

        w: fast weights at the start of the mini-batch; acc: sum of lr_j * g_j
        over the mini-batch's earlier tokens (None when this segment starts it);
        s: row factors of the r positions. Token i's output uses
        W_i = w - s_i * (acc + sum_{j <= i} lr_j g_j), all g_j taken at w.
        Returns (z [r, F], acc + sum_j lr_j g_j, stats or None).
        """
        xs, gs, z_k = self._forward_and_grads(w, k, v, ln_scale, ln_bias, eps)
        eta = jnp.tril(s[:, None] * lr[None, :])  # eta[i, j] = s_i lr_j, j <= i
        x = q
        for i in range(self.n_layers):
            wi, bi = w[f"w{i + 1}"], w[f"b{i + 1}"]
            z = x @ wi + bi - (eta * (x @ xs[i].T)) @ gs[i] - eta @ gs[i]
            if acc is not None:
                z = z - s[:, None] * (x @ acc[f"w{i + 1}"] + acc[f"b{i + 1}"])
            x = gelu_tanh(z) if i < self.n_layers - 1 else z
        out = q + layer_norm(x, ln_scale, ln_bias, eps)

        new_acc = {}
        for i in range(self.n_layers):
            gl = lr[:, None] * gs[i]
            dw, db = xs[i].T @ gl, gl.sum(0, keepdims=True)
            if acc is not None:
                dw, db = acc[f"w{i + 1}"] + dw, acc[f"b{i + 1}"] + db
            new_acc[f"w{i + 1}"], new_acc[f"b{i + 1}"] = dw, db

        st = None
        if stats:
            target = v - k
            w_end = commit(w, new_acc, s[-1])
            loss_end = ln_l2_loss(self.apply(w_end, k), target, ln_scale, ln_bias, eps)
            loss_start = ln_l2_loss(z_k, target, ln_scale, ln_bias, eps)
            st = {
                "loss_before": loss_start.mean(),
                "loss_after": loss_end.mean(),
                "last_token_loss_before": loss_start[-1],
                "last_token_loss_after": loss_end[-1],
                "delta_norm": jnp.abs(s[-1]) * jnp.sqrt(sum((a**2).sum() for a in new_acc.values())),
            }
        return out, new_acc, st


def commit(w, acc, s_last):
    """Weights after a mini-batch: w - s_last * acc."""
    return {name: w[name] - s_last * acc[name] for name in w}


LINEAR = Learner("ttt_linear", n_layers=1, expansion=1)
MLP = Learner("ttt_mlp", n_layers=2, expansion=4)
LEARNERS = {"ttt_linear": LINEAR, "ttt_mlp": MLP}
