"""Learning-rate and momentum schedules, and hyperparameter scaling rules.

Schedules are ``optax.Schedule``s: jit-able functions of the step count (an int or an int
array) that return float32. They validate their arguments when they are built and can be
given to any optax optimizer, to ``optax.inject_hyperparams`` (for ``learning_rate`` or a
momentum such as ``b1``), or joined with ``optax.join_schedules``.

* :func:`linear_warmup_d2z` — linear warmup, then linear decay to exactly zero (D2Z).
* :func:`warmup_stable_decay` — warmup, constant plateau, short cooldown (WSD).
* :func:`momentum_warmup`, :func:`momentum_warmup_cooldown` — momentum ramps.
* :func:`ema_momentum_for_batch_scale` — the EMA scaling rule ``ρ ↦ ρ^κ``.
* :func:`weight_decay_for_width`, :func:`learning_rate_for_width` — width transfer of AdamW
  hyperparameters for matrix-like parameters (``λ ∝ √d``, μP ``η ∝ 1/d``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "COOLDOWN_SHAPES",
    "linear_warmup_d2z",
    "warmup_stable_decay",
    "momentum_warmup",
    "momentum_warmup_cooldown",
    "ema_momentum_for_batch_scale",
    "weight_decay_for_width",
    "learning_rate_for_width",
]

#: Cooldown shapes of :func:`warmup_stable_decay`.
COOLDOWN_SHAPES = ("linear", "cosine", "sqrt", "power")


# ----------------------------------------------------------------------------- checks
def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real | jax.Array):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError(f"{name} must be a concrete real number, got {value!r}") from e
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _in_unit_interval(value: Any, name: str) -> float:
    value = _real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _positive(value: Any, name: str) -> float:
    value = _real(value, name)
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


# --------------------------------------------------------------------------- helpers
def _count(count: jax.typing.ArrayLike) -> jax.Array:
    """The step count as int32, negative counts clamped to 0."""
    return jnp.maximum(jnp.asarray(count).astype(jnp.int32), 0)


def _fraction(count: jax.Array, begin: int, length: int) -> jax.Array:
    """Progress ``clip((count - begin) / length, 0, 1)`` in float32 (1 when ``length == 0``)."""
    if length <= 0:
        return jnp.where(count >= begin, 1.0, 0.0).astype(jnp.float32)
    steps = jnp.clip(count - begin, 0, length)
    return steps.astype(jnp.float32) / jnp.float32(length)


def _remaining(count: jax.Array, end: int, length: int) -> jax.Array:
    """Fraction ``clip((end - count) / length, 0, 1)`` of a phase still ahead, in float32.

    Computed from the exact integer ``end - count`` so that values near the end of a decay
    keep full relative precision (``1 - progress`` would cancel)."""
    steps = jnp.clip(end - count, 0, length)
    return steps.astype(jnp.float32) / jnp.float32(length)


def _lerp(a: float, b: float, f: jax.Array) -> jax.Array:
    """``a + (b - a) f`` in float32, exactly ``a`` at ``f = 0``, exactly ``b`` at ``f = 1``, and
    monotone in ``f`` (clamped to the segment so float rounding cannot overshoot an end)."""
    a32, b32 = jnp.float32(a), jnp.float32(b)
    v = a32 + (b32 - a32) * f
    v = jnp.clip(v, jnp.minimum(a32, b32), jnp.maximum(a32, b32))
    return jnp.where(f <= 0, a32, jnp.where(f >= 1, b32, v))


# ------------------------------------------------------------------------- schedules
def linear_warmup_d2z(
    peak_value: float, total_steps: int, warmup_steps: int = 0, init_value: float = 0.0
) -> optax.Schedule:
    r"""Linear warmup followed by linear decay to exactly zero ("D2Z").

    With peak ``η``, warmup ``W`` and total ``T`` steps:

    .. math::
      \eta_t = \begin{cases}
        \eta_0 + (\eta - \eta_0)\, t / W, & t < W \\
        \eta\, (T - t) / (T - W), & W \le t \le T \\
        0, & t \ge T
      \end{cases}

    The value is ``peak_value`` at ``t = W``, exactly ``0.0`` at ``t = T`` and stays 0 after.
    Linear decay-to-zero beats the common cosine-to-10% schedule for AdamW LLM training at
    compute-optimal and longer token budgets (Bergsma et al.): late in training the
    parameters average over many updates.

    Args:
      peak_value: the value reached at the end of the warmup.
      total_steps: the step at which the value reaches 0 (the length of training).
      warmup_steps: length of the linear warmup, ``0 <= warmup_steps < total_steps``.
      init_value: value at step 0 when ``warmup_steps > 0``.

    Returns:
      An ``optax.Schedule`` mapping a step count to a float32 scalar (jit-able).

    Raises:
      ValueError: if ``total_steps < 1``, ``warmup_steps`` is negative or not below
        ``total_steps``, or a value is not a finite real number.

    Example:
      >>> from optzoo.schedules import linear_warmup_d2z
      >>> sched = linear_warmup_d2z(1.0, total_steps=10, warmup_steps=2)
      >>> [float(sched(t)) for t in (0, 1, 2, 6, 10, 11)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]

    References:
      Bergsma et al., *Straight to Zero: Why Linearly Decaying the Learning Rate to Zero Works
      Best for LLMs*, arXiv:2502.15938 (ICLR 2025).
    """
    peak = _real(peak_value, "peak_value")
    init = _real(init_value, "init_value")
    total = _int(total_steps, "total_steps", 1)
    warmup = _int(warmup_steps, "warmup_steps", 0)
    if warmup >= total:
        raise ValueError(
            f"warmup_steps ({warmup}) must be smaller than total_steps ({total}) "
            "so that the schedule can decay to zero at total_steps"
        )

    def schedule(count):
        t = _count(count)
        warm = _lerp(init, peak, _fraction(t, 0, warmup))
        decay = _lerp(0.0, peak, _remaining(t, total, total - warmup))  # = peak (T-t)/(T-W)
        return jnp.where(t < warmup, warm, decay)

    return schedule


def warmup_stable_decay(
    peak_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    cooldown_fraction: float = 0.2,
    cooldown_shape: str = "linear",
    power: float = 2.0,
    end_value: float = 0.0,
    init_value: float = 0.0,
) -> optax.Schedule:
    r"""Warmup–stable–decay (WSD): linear warmup, constant plateau, then a cooldown.

    With ``C = round(cooldown_fraction · T)`` cooldown steps starting at ``S = T − C`` and
    progress ``p = (t − S) / C``:

    .. math::
      \eta_t = \begin{cases}
        \eta_0 + (\eta - \eta_0)\, t / W, & t < W \\
        \eta, & W \le t < S \\
        \eta_{end} + (\eta - \eta_{end})\,(1 - d(p)), & S \le t < T \\
        \eta_{end}, & t \ge T
      \end{cases}

    where the decayed fraction ``d`` is ``p`` (``'linear'``), ``(1 − cos πp)/2``
    (``'cosine'``), ``√p`` (``'sqrt'``, the "1 − sqrt" cooldown) or ``1 − (1 − p)^power``
    (``'power'``, optax's polynomial decay). The value is exactly ``end_value`` from
    ``total_steps`` on. A constant plateau lets one training run be branched into cooldowns of
    several lengths; modded-nanogpt uses WSD with ``cooldown_fraction`` of the total steps.

    Args:
      peak_value: plateau value.
      total_steps: step at which the cooldown ends (the length of training).
      warmup_steps: length of the linear warmup from ``init_value``.
      cooldown_fraction: fraction of ``total_steps`` spent in the cooldown, in ``[0, 1]``;
        ``0`` keeps the plateau forever.
      cooldown_shape: ``'linear'``, ``'cosine'``, ``'sqrt'`` or ``'power'``.
      power: exponent of the ``'power'`` shape (``> 0``; 1 is linear); ignored otherwise.
      end_value: value at and after ``total_steps``.
      init_value: value at step 0 when ``warmup_steps > 0``.

    Returns:
      An ``optax.Schedule`` mapping a step count to a float32 scalar (jit-able).

    Raises:
      ValueError: if ``cooldown_fraction`` is outside ``[0, 1]``, the shape is unknown,
        ``power <= 0``, ``warmup_steps`` plus the cooldown exceed ``total_steps``, or a value is
        not a finite real number.

    Example:
      >>> from optzoo.schedules import warmup_stable_decay
      >>> sched = warmup_stable_decay(1.0, total_steps=10, warmup_steps=2,
      ...                             cooldown_fraction=0.4)
      >>> [float(sched(t)) for t in (0, 1, 2, 5, 6, 8, 10)]
      [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]

    References:
      Hu et al., *MiniCPM*, arXiv:2404.06395 (2024) (WSD);
      Hägele et al., *Scaling Laws and Compute-Optimal Training Beyond Fixed Training
      Durations*, arXiv:2405.18392 (2024) (1 − sqrt cooldown).
    """
    peak = _real(peak_value, "peak_value")
    end = _real(end_value, "end_value")
    init = _real(init_value, "init_value")
    total = _int(total_steps, "total_steps", 1)
    warmup = _int(warmup_steps, "warmup_steps", 0)
    frac = _in_unit_interval(cooldown_fraction, "cooldown_fraction")
    if cooldown_shape not in COOLDOWN_SHAPES:
        raise ValueError(
            f"cooldown_shape must be one of {list(COOLDOWN_SHAPES)}, got {cooldown_shape!r}"
        )
    power = _positive(power, "power")
    cooldown = int(round(frac * total))
    if warmup + cooldown > total:
        raise ValueError(
            f"warmup_steps ({warmup}) plus the cooldown ({cooldown} = "
            f"round({frac} * {total}) steps) exceed total_steps ({total})"
        )

    def remaining(q):
        # 1 - d(p) written in the remaining fraction q = 1 - p, free of cancellation near the
        # end of the cooldown: cos²(πp/2) = sin²(πq/2), 1 - √(1-q) = q / (1 + √(1-q)).
        if cooldown_shape == "linear":
            r = q
        elif cooldown_shape == "cosine":
            r = jnp.sin(0.5 * jnp.pi * q) ** 2
        elif cooldown_shape == "sqrt":
            r = q / (1.0 + jnp.sqrt(1.0 - q))
        else:
            r = q**power
        return jnp.where(q >= 1, 1.0, jnp.where(q <= 0, 0.0, r)).astype(jnp.float32)

    def schedule(count):
        t = _count(count)
        warm = _lerp(init, peak, _fraction(t, 0, warmup))
        if cooldown == 0:
            return jnp.where(t < warmup, warm, jnp.float32(peak))
        cool = _lerp(end, peak, remaining(_remaining(t, total, cooldown)))
        return jnp.where(t < warmup, warm, cool)

    return schedule


def momentum_warmup(start: float, end: float, warmup_steps: int) -> optax.Schedule:
    r"""Linear momentum warmup from ``start`` to ``end``, then constant.

    .. math::
      \beta_t = (1 - f_t)\,\beta_{start} + f_t\,\beta_{end}, \qquad f_t = \min(t / W, 1).

    modded-nanogpt warms Muon's momentum from 0.85 to 0.95 over the first 300 steps
    (``momentum_warmup(0.85, 0.95, 300)``): a short memory while the gradients change fast.
    Use it for any momentum hyperparameter, e.g.
    ``optax.inject_hyperparams(optzoo.lion)(learning_rate=..., b1=momentum_warmup(...))``.

    Args:
      start: momentum at step 0, in ``[0, 1]``.
      end: momentum from step ``warmup_steps`` on, in ``[0, 1]``.
      warmup_steps: ramp length (``>= 0``; 0 gives the constant ``end``).

    Returns:
      An ``optax.Schedule`` mapping a step count to a float32 scalar (jit-able).

    Raises:
      ValueError: for a momentum outside ``[0, 1]`` or a negative ``warmup_steps``.

    Example:
      >>> from optzoo.schedules import momentum_warmup
      >>> sched = momentum_warmup(0.85, 0.95, 300)
      >>> round(float(sched(150)), 4), float(sched(300)) == float(sched(10_000))
      (0.9, True)

    References:
      K. Jordan et al., *modded-nanogpt* speedrun (2024), github.com/KellerJordan/modded-nanogpt
      (Muon momentum warmup).
    """
    start = _in_unit_interval(start, "start")
    end = _in_unit_interval(end, "end")
    warmup = _int(warmup_steps, "warmup_steps", 0)

    def schedule(count):
        return _lerp(start, end, _fraction(_count(count), 0, warmup))

    return schedule


def momentum_warmup_cooldown(
    start: float, peak: float, end: float, total_steps: int, warmup_steps: int, cooldown_steps: int
) -> optax.Schedule:
    r"""Momentum warmup ``start → peak``, plateau, then linear cooldown ``peak → end``.

    .. math::
      \beta_t = \begin{cases}
        \mathrm{lerp}(\beta_{start}, \beta_{peak}, t / W), & t < W \\
        \beta_{peak}, & W \le t < T - C \\
        \mathrm{lerp}(\beta_{peak}, \beta_{end}, (t - T + C) / C), & T - C \le t < T \\
        \beta_{end}, & t \ge T
      \end{cases}

    The cooldown lowers the momentum during the last ``C`` steps (e.g. 0.95 → 0.85 while the
    learning rate decays to zero) so that the final iterate reflects the latest gradients
    rather than a long average; some modded-nanogpt records do this for Muon. With
    ``cooldown_steps=0`` this is :func:`momentum_warmup` ending at ``peak``.

    Args:
      start: momentum at step 0, in ``[0, 1]``.
      peak: plateau momentum, in ``[0, 1]``.
      end: momentum at and after ``total_steps``, in ``[0, 1]``.
      total_steps: step at which the cooldown ends.
      warmup_steps: warmup length (``>= 0``).
      cooldown_steps: cooldown length (``>= 0``), ``warmup_steps + cooldown_steps <=
        total_steps``.

    Returns:
      An ``optax.Schedule`` mapping a step count to a float32 scalar (jit-able).

    Raises:
      ValueError: for a momentum outside ``[0, 1]``, negative lengths, or phases longer than
        ``total_steps``.

    Example:
      >>> from optzoo.schedules import momentum_warmup_cooldown
      >>> sched = momentum_warmup_cooldown(0.85, 0.95, 0.85, total_steps=1000,
      ...                                  warmup_steps=300, cooldown_steps=100)
      >>> [round(float(sched(t)), 3) for t in (0, 300, 900, 950, 1000)]
      [0.85, 0.95, 0.95, 0.9, 0.85]

    References:
      K. Jordan et al., *modded-nanogpt* speedrun (2024), github.com/KellerJordan/modded-nanogpt.
    """
    start = _in_unit_interval(start, "start")
    peak = _in_unit_interval(peak, "peak")
    end = _in_unit_interval(end, "end")
    total = _int(total_steps, "total_steps", 1)
    warmup = _int(warmup_steps, "warmup_steps", 0)
    cooldown = _int(cooldown_steps, "cooldown_steps", 0)
    if warmup + cooldown > total:
        raise ValueError(
            f"warmup_steps ({warmup}) plus cooldown_steps ({cooldown}) exceed total_steps ({total})"
        )

    def schedule(count):
        t = _count(count)
        warm = _lerp(start, peak, _fraction(t, 0, warmup))
        if cooldown == 0:
            return warm
        cool = _lerp(end, peak, _remaining(t, total, cooldown))
        return jnp.where(t < warmup, warm, cool)

    return schedule


# ----------------------------------------------------------------------- scaling rules
def ema_momentum_for_batch_scale(rho: float, kappa: float) -> float:
    r"""EMA momentum for a batch size scaled by ``κ``: ``ρ ↦ ρ^κ``.

    A model EMA ``ξ ← ρ ξ + (1 − ρ) θ`` run at batch size ``B`` averages over ``≈ B/(1 − ρ)``
    samples. After scaling the batch size to ``κB`` (and the optimizer's learning rate by its
    own rule, e.g. linearly for SGD), ``ρ^κ`` keeps the averaging horizon in samples: ``T/κ``
    steps at ``ρ^κ`` weight the past exactly as ``T`` steps at ``ρ`` (``(ρ^κ)^{T/κ} = ρ^T``).

    Args:
      rho: EMA momentum at the reference batch size, in ``[0, 1]``.
      kappa: batch-size multiplier ``κ > 0`` (``κ < 1`` for smaller batches).

    Returns:
      ``rho ** kappa`` as a Python float.

    Raises:
      ValueError: if ``rho`` is outside ``[0, 1]`` or ``kappa <= 0``.

    Example:
      >>> from optzoo.schedules import ema_momentum_for_batch_scale
      >>> round(ema_momentum_for_batch_scale(0.999, 8), 6)
      0.992028

    References:
      Busbridge et al., *How to Scale Your EMA*, arXiv:2307.13813 (NeurIPS 2023), the EMA
      scaling rule (Definition 1.2).
    """
    rho = _in_unit_interval(rho, "rho")
    kappa = _positive(kappa, "kappa")
    return rho**kappa


def weight_decay_for_width(base_weight_decay: float, base_width: int, width: int) -> float:
    r"""AdamW weight decay of a matrix-like parameter at a new width: ``λ ∝ √d``.

    .. math:: \lambda(d) = \lambda(d_0)\, \sqrt{d / d_0}

    Context: under μP, AdamW learning rates of matrix-like (hidden) parameters scale as
    ``η ∝ 1/d`` (:func:`learning_rate_for_width`). Fan et al. observe that a matrix's
    singular-value spectrum then scales as ``√(η/λ)`` with a width-independent shape and its
    top singular value as ``√(η/λ)·d^{0.75}``; keeping the sublayer gain width-invariant needs
    ``λ ∝ √d``, so ``ηλ ∝ d^{-1/2}``. Vector-like parameters (biases, norm scales, and
    embeddings in their setting) keep ``η = Θ(1)`` and ``λ = 0``: do not apply this rule to
    them. Tune ``λ`` on a narrow proxy of width ``d_0`` and transfer it with this function.

    Args:
      base_weight_decay: weight decay tuned at ``base_width`` (``>= 0``).
      base_width: width ``d_0`` of the tuned proxy model (``> 0``).
      width: width ``d`` of the target model (``> 0``).

    Returns:
      The weight decay at ``width`` as a Python float.

    Raises:
      ValueError: for a negative weight decay or a non-positive width.

    Example:
      >>> from optzoo.schedules import weight_decay_for_width, learning_rate_for_width
      >>> weight_decay_for_width(0.1, base_width=256, width=1024)
      0.2
      >>> learning_rate_for_width(4e-3, base_width=256, width=1024)
      0.001

    References:
      Fan, Liu, Zhao, Yuan, Gu, *Robust Layerwise Scaling Rules by Proper Weight Decay
      Tuning*, arXiv:2510.15262 (2025).
    """
    wd = _real(base_weight_decay, "base_weight_decay")
    if wd < 0:
        raise ValueError(f"base_weight_decay must be >= 0, got {wd}")
    d0 = _positive(base_width, "base_width")
    d = _positive(width, "width")
    return wd * math.sqrt(d / d0)


def learning_rate_for_width(base_learning_rate: float, base_width: int, width: int) -> float:
    r"""μP AdamW learning rate of a matrix-like parameter at a new width: ``η ∝ 1/d``.

    .. math:: \eta(d) = \eta(d_0)\, d_0 / d

    The companion of :func:`weight_decay_for_width` (together: ``ηλ ∝ d^{-1/2}``). Vector-like
    parameters keep their learning rate.

    Args:
      base_learning_rate: learning rate tuned at ``base_width``.
      base_width: width ``d_0`` of the tuned proxy model (``> 0``).
      width: width ``d`` of the target model (``> 0``).

    Returns:
      The learning rate at ``width`` as a Python float.

    Raises:
      ValueError: for a non-positive width or a non-finite learning rate.

    References:
      Yang et al., *Tensor Programs V*, arXiv:2203.03466 (2022) (μP);
      Fan et al., arXiv:2510.15262 (2025).
    """
    lr = _real(base_learning_rate, "base_learning_rate")
    d0 = _positive(base_width, "base_width")
    d = _positive(width, "width")
    return lr * d0 / d
