"""Parameter trees with real model shapes, for memory and step-time benchmarks.

Pure functions returning nested dicts (Flax layout: ``Dense`` kernels are
``(fan_in, fan_out)``, ``Embed`` tables ``(vocab, d)``) whose leaves are
``jax.ShapeDtypeStruct`` (default: nothing is allocated, use with ``jax.eval_shape``) or
zeros. Paths are '/'-joinable dict keys in the common Flax naming that
``optzoo.routing``'s default rules recognise.

GPT-2 small (124,439,808 parameters with the tied LM head), per-layer variant::

    embed/embedding                 (50257, 768)   token table (wte), tied LM head
    pos_embed/embedding             (1024, 768)    positions (wpe)
    layers/{i}/ln_1/{scale,bias}    (768,)
    layers/{i}/attn/qkv_proj/kernel (768, 2304)    fused q|k|v, bias (2304,)
      or layers/{i}/attn/{q,k,v}_proj/kernel (768, 768), bias (768,)   (fused_qkv=False)
    layers/{i}/attn/o_proj/kernel   (768, 768),    bias (768,)
    layers/{i}/ln_2/{scale,bias}    (768,)
    layers/{i}/mlp/fc/kernel        (768, 3072),   bias (3072,)
    layers/{i}/mlp/proj/kernel      (3072, 768),   bias (768,)
    ln_f/{scale,bias}               (768,)
    lm_head/kernel                  (768, 50257)   only with tie_embeddings=False

``i`` runs over ``'0'`` .. ``'11'``. The stacked variant (``stacked=True``, Flax
``nn.scan`` over layers) drops the ``{i}`` level and adds a leading axis of 12 to every
per-layer leaf: ``layers/attn/qkv_proj/kernel`` is ``(12, 768, 2304)``, ``layers/ln_1/scale``
is ``(12, 768)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["gpt2_small_like_tree", "GPT2_SMALL", "is_hidden_kernel", "hidden_layout"]

GPT2_SMALL = dict(vocab=50257, context=1024, d_model=768, n_layers=12, d_ff=3072)


def gpt2_small_like_tree(
    dtype: Any = jnp.float32,
    *,
    fused_qkv: bool = True,
    stacked: bool = False,
    tie_embeddings: bool = True,
    abstract: bool = True,
) -> dict[str, Any]:
    """GPT-2-small-shaped parameter tree (see the module docstring for names and shapes).

    Args:
      dtype: dtype of every leaf.
      fused_qkv: one ``qkv_proj`` ``(768, 2304)`` kernel per layer (GPT-2's ``c_attn``), or
        separate ``q_proj``/``k_proj``/``v_proj`` ``(768, 768)`` kernels.
      stacked: scanned layers, every per-layer leaf with a leading axis of 12.
      tie_embeddings: GPT-2 ties the LM head to ``embed/embedding``; ``False`` adds a
        ``lm_head/kernel`` of shape ``(768, 50257)``.
      abstract: ``jax.ShapeDtypeStruct`` leaves (no allocation) or, if ``False``, zeros.

    Returns:
      A nested dict of ``jax.ShapeDtypeStruct`` (or arrays).
    """
    v, ctx, d, n_layers, ff = (
        GPT2_SMALL[k] for k in ("vocab", "context", "d_model", "n_layers", "d_ff")
    )

    def leaf(*shape, per_layer=True):
        if per_layer and stacked:
            shape = (n_layers,) + shape
        if abstract:
            return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
        return jnp.zeros(shape, dtype)

    def dense(fan_in, fan_out):
        return {"kernel": leaf(fan_in, fan_out), "bias": leaf(fan_out)}

    def norm(per_layer=True):
        return {"scale": leaf(d, per_layer=per_layer), "bias": leaf(d, per_layer=per_layer)}

    def block():
        if fused_qkv:
            attn = {"qkv_proj": dense(d, 3 * d)}
        else:
            attn = {name: dense(d, d) for name in ("q_proj", "k_proj", "v_proj")}
        attn["o_proj"] = dense(d, d)
        return {
            "ln_1": norm(),
            "attn": attn,
            "ln_2": norm(),
            "mlp": {"fc": dense(d, ff), "proj": dense(ff, d)},
        }

    layers = block() if stacked else {str(i): block() for i in range(n_layers)}
    tree = {
        "embed": {"embedding": leaf(v, d, per_layer=False)},
        "pos_embed": {"embedding": leaf(ctx, d, per_layer=False)},
        "layers": layers,
        "ln_f": norm(per_layer=False),
    }
    if not tie_embeddings:
        tree["lm_head"] = {"kernel": leaf(d, v, per_layer=False)}
    return tree


def is_hidden_kernel(path: tuple[Any, ...], x: Any) -> bool:
    """Whether the leaf at ``path`` is a hidden matrix of these trees: a ``kernel`` under
    ``layers/`` with at least two axes (embeddings, norms and biases are not)."""
    keys = [getattr(k, "key", None) for k in path]
    return bool(keys) and keys[0] == "layers" and keys[-1] == "kernel" and len(x.shape) >= 2


def hidden_layout(params: Any) -> Any:
    """``MatrixLayout()`` (last two axes; leading axes batch) on the hidden kernels
    (:func:`is_hidden_kernel`), ``None`` elsewhere: the Muon / AdamW split of the benchmarks."""
    from optzoo.layout import MatrixLayout

    return jax.tree_util.tree_map_with_path(
        lambda p, x: MatrixLayout() if is_hidden_kernel(p, x) else None, params
    )
