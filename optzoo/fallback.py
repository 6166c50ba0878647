"""The default fallback of the matrix optimizers: AdamW on every leaf without a matrix layout.

Every matrix alias (``muon``, ``polargrad``, ``ef_muon``, ``fismo``, the symmetry-compatible
maps and ``symmetry_compatible``) is an ``optax.partition``: leaves whose resolved layout is a
:class:`~optzoo.layout.MatrixLayout` go to the matrix rule, all others (biases, norm scales,
leaves the layout sends away) to ``fallback=`` — never silently to the matrix rule. The
argument takes

* an ``optax.GradientTransformation`` (with its own learning rate), used as given, or
* an :class:`AdamW` (this module): the default AdamW, configured in one place, whose
  learning rate by default **follows the method's** (``lr_ratio × learning_rate``: a schedule
  is scaled pointwise, an injected value under ``optax.inject_hyperparams`` every step), or
* ``None``: the alias's default ``AdamW`` (for the Muon family ``AdamW()``: ``0.015 ×``
  Muon's rate, i.e. the reference's 3e-4 at Muon's 0.02, ``b = (0.9, 0.95)``, no decay).

Example:
  >>> import jax.numpy as jnp, optzoo
  >>> params = {'w': jnp.ones((4, 8)), 'b': jnp.zeros(8)}
  >>> opt = optzoo.muon(0.02, fallback=optzoo.fallback.AdamW(b2=0.999, weight_decay=0.1))
  >>> state = opt.init(params)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optzoo import _checks

__all__ = ["AdamW", "LR_RATIO", "FallbackSpec", "learning_rate_of"]

#: The default AdamW's learning rate as a multiple of the matrix method's: the Muon
#: reference's Adam rate 3e-4 at its Muon rate 0.02.
LR_RATIO = 0.015


@dataclasses.dataclass(frozen=True)
class AdamW:
    """The AdamW a matrix optimizer runs on its non-matrix leaves.

    Attributes:
      learning_rate: a float or schedule used exactly as given; ``None`` (default): ``lr_ratio
        ×`` the method's learning rate, following its schedule or injected value.
      lr_ratio: the multiple of the method's learning rate used when ``learning_rate`` is
        ``None`` (default :data:`LR_RATIO`).
      b1: first-moment decay.
      b2: second-moment decay (0.95, the Muon reference's setting; optax's default is 0.999).
      eps: added to the root of the second moment.
      weight_decay: decoupled weight decay of the fallback leaves (multiplied by its rate).
      mu_dtype: dtype of the first moment; ``None``: the method's ``mu_dtype``.

    float16 leaves keep their moments in float32 (plain Adam in float16 turns a zero gradient
    into NaN and overflows its second moment beyond ``|g| = 256``); updates come back in the
    gradients' dtypes.
    """

    learning_rate: optax.ScalarOrSchedule | None = None
    lr_ratio: float = LR_RATIO
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    mu_dtype: Any = None

    def __post_init__(self):
        what = "optzoo.fallback.AdamW"
        if self.learning_rate is not None:
            _checks.learning_rate(self.learning_rate, "learning_rate", what)
        _checks.positive(self.lr_ratio, "lr_ratio", what)
        _checks.unit_interval(self.b1, "b1", what)
        _checks.unit_interval(self.b2, "b2", what)
        _checks.positive(self.eps, "eps", what)
        _checks.nonnegative(self.weight_decay, "weight_decay", what)
        _checks.float_dtype(self.mu_dtype, "mu_dtype", what)

    def build(
        self, method_learning_rate: optax.ScalarOrSchedule | None = None, mu_dtype: Any = None
    ) -> optax.GradientTransformationExtraArgs:
        """The transformation, for a method running at ``method_learning_rate`` whose own
        momentum dtype is ``mu_dtype`` (used when this fallback sets none)."""
        lr = learning_rate_of(self, method_learning_rate)
        return float16_in_float32(
            optax.adamw(
                lr,
                b1=self.b1,
                b2=self.b2,
                eps=self.eps,
                weight_decay=self.weight_decay,
                mu_dtype=self.mu_dtype if self.mu_dtype is not None else mu_dtype,
            )
        )


FallbackSpec = optax.GradientTransformation | AdamW | None


def learning_rate_of(spec: AdamW, method_learning_rate: optax.ScalarOrSchedule | None) -> Any:
    """``spec.learning_rate`` when set, else ``spec.lr_ratio × method_learning_rate``
    (pointwise for a schedule)."""
    if spec.learning_rate is not None:
        return spec.learning_rate
    if method_learning_rate is None:
        raise TypeError(
            "optzoo.fallback.AdamW: learning_rate=None follows the method's "
            "learning rate, and this method has none; set learning_rate"
        )
    ratio = spec.lr_ratio
    if callable(method_learning_rate):
        return lambda count: ratio * method_learning_rate(count)
    return ratio * method_learning_rate


def _is_float16(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.result_type(x) == jnp.float16


def _upcast_float16(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(jnp.float32) if _is_float16(x) else x, tree)


def float16_in_float32(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` run in float32 on the float16 leaves; every other leaf exactly as ``tx``.

    Adam in float16 breaks at both ends of the range: ``eps=1e-8`` rounds to 0, so a zero
    gradient gives ``0/0 = NaN`` and a small one (``|g| ~ 1e-4``, where ``(1-b2)·g²``
    underflows to 0) ``m/0 = inf``; and ``nu`` overflows once ``|g| > 256`` (``g² > 65504``).
    Here float16 gradients (and params) are upcast to float32 before ``tx`` sees them, so
    ``tx`` keeps float32 state for those leaves, and their updates are cast back to float16.
    float32/bfloat16/float64 leaves pass through untouched (bitwise identical to ``tx``).

    Args:
      tx: an elementwise transformation (Adam, AdamW...).

    Returns:
      The wrapped transformation (extra arguments are forwarded to ``tx``).
    """
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        return tx.init(_upcast_float16(params))

    def update_fn(updates, state, params=None, **extra_args):
        new, state = tx.update(
            _upcast_float16(updates),
            state,
            None if params is None else _upcast_float16(params),
            **extra_args,
        )
        new = jax.tree.map(
            lambda u, g: u.astype(jnp.float16) if _is_float16(g) else u, new, updates
        )
        return new, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def resolve(
    spec: FallbackSpec, *, default: AdamW, method_learning_rate: Any, mu_dtype: Any, what: str
) -> optax.GradientTransformation:
    """The fallback transformation of ``spec`` (``None``: ``default``), checked."""
    if spec is None:
        spec = default
    if isinstance(spec, AdamW):
        return spec.build(method_learning_rate, mu_dtype)
    if not isinstance(spec, optax.GradientTransformation):
        raise TypeError(
            f"{what}: fallback must be an optax.GradientTransformation, an "
            f"optzoo.fallback.AdamW or None, got {type(spec).__name__}"
        )
    return spec
