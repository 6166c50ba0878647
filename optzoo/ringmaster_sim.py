"""Discrete-event simulation of ``n`` heterogeneous workers driving an optax server.

One process, one parameter copy per busy worker: the simulation reproduces the algorithmic
semantics of asynchronous training exactly (which gradient, computed at which iterate,
arrives when), with time simulated from per-worker compute-time profiles rather than
measured. Used to compare Ringmaster LMO (:mod:`optzoo.ringmaster`) with synchronous and
plain asynchronous training across heterogeneity levels.

Event loop (asynchronous mode; ``k`` = updates applied so far):

1. every worker starts a job at ``x_0``; a job stores the iterate it read, the update count
   ``k_start`` at that moment and its own RNG key (``fold_in(seed_key, job_id)``, job ids
   counting every job started), and finishes ``τ_i`` later (drawn from :class:`ComputeTimes`);
2. the earliest finishing job is popped (ties: lowest worker id); the clock jumps to its
   finish time; its delay is ``δ = k − k_start``;
3. if ``δ < R_k`` its gradient (``grad_fn(snapshot, key)``, evaluated lazily now — identical
   to computing it at the start) goes through ``tx`` and ``k ← k + 1``; otherwise it is
   discarded. Either way the worker restarts at the current iterate;
4. with ``cancel_stale`` (Ringmaster *with calculation stops*, the default), every other
   worker whose delay (counted after this update) reached ``R_k`` — the threshold of this
   arrival, ``k`` the count *before* its update, as in the authors' simulator
   (``ParameterAgnosticRingmasterMuonASGD`` refreshes ``R`` only after cancelling) — is
   cancelled and restarted now; its partial work is lost (counted in ``jobs_cancelled``,
   not in ``grads_computed``).

Synchronous mode: all ``n`` workers compute at the same iterate, the server waits for the
slowest, averages the ``n`` gradients and applies one update (minibatch SGD/Muon).

Rennala mode (``batch_size=S``; Tyurin & Richtárik, *Optimal Time Complexities of Parallel
Stochastic Optimization Methods Under a Fixed Computation Model*, NeurIPS 2023, Method 4;
the authors' ``RennalaMuonSGD``): every worker computes at the current iterate ``x_k``; a
worker that finishes hands in its gradient and starts another one *at the same* ``x_k``; once
``S`` gradients are in, the server averages them, applies one update, and every worker is
restarted at ``x_{k+1}`` (the jobs still running are cancelled, as the reference's
``reset_all_nodes``). Fast workers contribute several gradients to a batch, slow ones none.

Delay-adaptive asynchronous SGD (Mishchenko, Bach, Even, Woodworth, *Asynchronous SGD Beats
Minibatch SGD Under Arbitrary Delays*, NeurIPS 2022; Koloskova, Stich, Jaggi, NeurIPS 2022;
the authors' ``DelayAdaptiveMuonASGD``) is the asynchronous mode with ``R = ∞`` and the
server update wrapped in :func:`optzoo.ringmaster.delay_adaptive` (step ``η·n/max(n, δ)``).

Counters: ``grads_computed`` (completed gradient computations, applied or discarded),
``grads_applied``, ``grads_discarded``, ``jobs_cancelled``, and per worker
``applied_per_worker`` / ``computed_per_worker`` (which workers' gradients the server used:
at high heterogeneity Ringmaster may apply only the fastest worker's). ``history`` samples
the loss on a uniform simulated-time grid (``eval_interval``) and/or every ``eval_every`` updates.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import numbers
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo.ringmaster import DelayThreshold, DiscardStaleState, delay_threshold_at

__all__ = [
    "ComputeTimes",
    "SimulationResult",
    "fixed_times",
    "reference_times",
    "heterogeneous_times",
    "random_times",
    "straggler_times",
    "simulate",
]

JITTERS = ("none", "halfnormal", "exponential")


@dataclasses.dataclass(frozen=True)
class ComputeTimes:
    """Per-worker compute-time profile: ``τ_i = (base_i + jitter_i)·stall``.

    Attributes:
      base: mean-free part ``base_i > 0`` of every worker's job time (its length is ``n``).
      jitter: ``'none'``, ``'halfnormal'`` (``|N(0, scale_i²)|``) or ``'exponential'``
        (``Exp(mean=scale_i)``), drawn per job.
      jitter_scale: ``scale_i`` (one number for all workers or one per worker).
      stall_prob: probability that a job stalls (straggles) …
      stall_factor: … and is then ``stall_factor`` times longer.
    """

    base: tuple[float, ...]
    jitter: str = "none"
    jitter_scale: float | tuple[float, ...] = 0.0
    stall_prob: float = 0.0
    stall_factor: float = 1.0

    def __post_init__(self):
        base = tuple(float(t) for t in self.base)
        object.__setattr__(self, "base", base)
        if not base or any(not t > 0 for t in base):
            raise ValueError(
                f"ComputeTimes: base times must be a non-empty sequence of "
                f"positive numbers, got {self.base}"
            )
        if self.jitter not in JITTERS:
            raise ValueError(
                f"ComputeTimes: unknown jitter {self.jitter!r}; expected one of {list(JITTERS)}"
            )
        scale = self.jitter_scale
        if not isinstance(scale, numbers.Real):
            scale = tuple(float(s) for s in scale)
            if len(scale) != len(base):
                raise ValueError(
                    f"ComputeTimes: jitter_scale has {len(scale)} entries for {len(base)} workers"
                )
            object.__setattr__(self, "jitter_scale", scale)
        if not 0.0 <= self.stall_prob <= 1.0 or not self.stall_factor >= 1.0:
            raise ValueError(
                "ComputeTimes: need 0 <= stall_prob <= 1 and stall_factor >= 1, "
                f"got {self.stall_prob}, {self.stall_factor}"
            )

    @property
    def n_workers(self) -> int:
        return len(self.base)

    def scale_of(self, worker: int) -> float:
        s = self.jitter_scale
        return float(s) if isinstance(s, numbers.Real) else s[worker]

    def sample(self, worker: int, rng: np.random.Generator) -> float:
        """One job time of ``worker``."""
        t = self.base[worker]
        scale = self.scale_of(worker)
        if self.jitter == "halfnormal" and scale > 0:
            t += abs(rng.normal(0.0, scale))
        elif self.jitter == "exponential" and scale > 0:
            t += rng.exponential(scale)
        if self.stall_prob > 0 and rng.random() < self.stall_prob:
            t *= self.stall_factor
        return t

    def mean(self, worker: int) -> float:
        """Expected job time of ``worker`` (for reports and the ``heterogeneity`` ratio)."""
        scale = self.scale_of(worker)
        extra = {"none": 0.0, "halfnormal": scale * math.sqrt(2 / math.pi), "exponential": scale}[
            self.jitter
        ]
        return (self.base[worker] + extra) * (1 + self.stall_prob * (self.stall_factor - 1))

    @property
    def heterogeneity(self) -> float:
        """Ratio of the slowest to the fastest expected job time."""
        means = [self.mean(i) for i in range(self.n_workers)]
        return max(means) / min(means)


def fixed_times(n_workers: int, tau: float | Sequence[float] = 1.0) -> ComputeTimes:
    """Deterministic times: ``τ`` for every worker, or one ``τ_i`` per worker."""
    base = [tau] * n_workers if isinstance(tau, numbers.Real) else list(tau)
    if len(base) != n_workers:
        raise ValueError(f"fixed_times: {len(base)} times for {n_workers} workers")
    return ComputeTimes(tuple(base))


def reference_times(n_workers: int, noise: float = 0.05) -> ComputeTimes:
    """The Ringmaster LMO experiments' profile: ``τ_i = √(i+1) + |N(0, (noise·√(i+1))²)|``
    (0-based ``i``; reference code ``build_transport`` with its default base time 1: the
    transport returns ``now + delay_i + noise``, ``delay_i = √(i+1)``). Slowest/fastest
    ``≈ √n``. (Earlier versions added 1 to every ``τ_i``, which the reference does not.)"""
    roots = [math.sqrt(i + 1) for i in range(n_workers)]
    return ComputeTimes(tuple(roots), "halfnormal", tuple(noise * r for r in roots))


def heterogeneous_times(n_workers: int, level: float, noise: float = 0.05) -> ComputeTimes:
    """A heterogeneity sweep: ``τ_i = 1 + level·√i`` plus half-normal jitter of scale
    ``noise·τ_i``; ``level = 0`` is homogeneous, the slowest/fastest ratio is
    ``≈ 1 + level·√(n−1)``."""
    if level < 0:
        raise ValueError(f"heterogeneous_times: level must be >= 0, got {level}")
    base = tuple(1.0 + level * math.sqrt(i) for i in range(n_workers))
    return ComputeTimes(base, "halfnormal", tuple(noise * t for t in base))


def random_times(n_workers: int, tau: float = 1.0, spread: float = 1.0) -> ComputeTimes:
    """Random times: ``τ = tau·(1 − spread/2) + Exp(mean=tau·spread/2)`` for every worker
    (same mean ``tau``, fluctuating per job)."""
    if not 0 <= spread < 2:
        raise ValueError(f"random_times: spread must lie in [0, 2), got {spread}")
    return ComputeTimes((tau * (1 - spread / 2),) * n_workers, "exponential", tau * spread / 2)


def straggler_times(
    n_workers: int,
    tau: float = 1.0,
    n_slow: int = 1,
    slowdown: float = 10.0,
    stall_prob: float = 0.0,
    stall_factor: float = 10.0,
) -> ComputeTimes:
    """Stragglers: the last ``n_slow`` workers take ``slowdown·τ``; any job may also stall
    (``stall_prob``, ``stall_factor``)."""
    if not 0 <= n_slow <= n_workers:
        raise ValueError(f"straggler_times: n_slow={n_slow} for {n_workers} workers")
    base = tuple(tau * (slowdown if i >= n_workers - n_slow else 1.0) for i in range(n_workers))
    return ComputeTimes(base, stall_prob=stall_prob, stall_factor=stall_factor)


@dataclasses.dataclass
class SimulationResult:
    """Outcome of :func:`simulate`.

    Attributes:
      params: final parameters; ``opt_state``: final optimizer state.
      time: simulated time at the end; ``updates``: server updates applied.
      grads_computed / grads_applied / grads_discarded / jobs_cancelled: counters (module
        docstring).
      history: dicts ``{time, updates, grads_computed, grads_discarded, jobs_cancelled,
        loss}`` (``loss`` from ``eval_fn``; ``None`` without one).
      trace: one dict per applied update ``{time, worker, job, delay, threshold, loss,
        workers}`` (``loss``: the worker's minibatch loss at its snapshot; ``workers``: the
        workers whose gradients went into it, one per gradient; ``worker = -1`` for a
        synchronous or Rennala batch).
      params_trace: parameters after each applied update (``record_params=True``).
      applied_per_worker / computed_per_worker: per worker, gradients that went into an
        applied update / gradient computations completed.
    """

    params: Any
    opt_state: Any
    time: float = 0.0
    updates: int = 0
    grads_computed: int = 0
    grads_applied: int = 0
    grads_discarded: int = 0
    jobs_cancelled: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    trace: list[dict] = dataclasses.field(default_factory=list)
    params_trace: list[Any] = dataclasses.field(default_factory=list)
    applied_per_worker: list[int] = dataclasses.field(default_factory=list)
    computed_per_worker: list[int] = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready counters, history and trace (no arrays)."""
        keys = (
            "time",
            "updates",
            "grads_computed",
            "grads_applied",
            "grads_discarded",
            "jobs_cancelled",
            "applied_per_worker",
            "computed_per_worker",
        )
        return {**{k: getattr(self, k) for k in keys}, "history": self.history, "trace": self.trace}


_JITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _jitted(fn: Callable, kind: str) -> Callable:
    """One jitted wrapper per user function, so repeated simulations reuse its compilation."""
    cache = _JITTED.setdefault(fn, {})
    if kind not in cache:
        if kind == "grad":
            cache[kind] = jax.jit(lambda p, key, job: fn(p, jax.random.fold_in(key, job)))
        else:
            cache[kind] = jax.jit(fn)
    return cache[kind]


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _jitted_step(tx: optax.GradientTransformation, pass_delay: bool) -> Callable:
    """One jitted server step per transform (keyed on its ``update``), so repeated
    simulations of the same ``tx`` (seeds, thresholds) reuse its compilation."""
    cache = _STEPS.setdefault(tx.update, {})
    if pass_delay not in cache:
        txe = optax.with_extra_args_support(tx)

        def step(p, s, g, delay):
            extra = {"delay": delay} if pass_delay else {}
            u, s = txe.update(g, s, p, **extra)
            return optax.apply_updates(p, u), s

        cache[pass_delay] = jax.jit(step)
    return cache[pass_delay]


def _tree_mean(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]) / len(xs), *trees)


def simulate(
    tx: optax.GradientTransformation,
    params: Any,
    grad_fn: Callable[[Any, jax.Array], tuple[jax.Array, Any]],
    times: ComputeTimes,
    *,
    delay_threshold: DelayThreshold = None,
    cancel_stale: bool = True,
    synchronous: bool = False,
    batch_size: int | None = None,
    max_updates: int | None = None,
    max_time: float | None = None,
    max_grads: int | None = None,
    eval_fn: Callable[[Any], jax.Array] | None = None,
    eval_interval: float | None = None,
    eval_every: int | None = None,
    seed: int = 0,
    pass_delay: bool = True,
    record_params: bool = False,
) -> SimulationResult:
    """Runs ``tx`` as the server of ``times.n_workers`` simulated workers.

    Args:
      tx: the server update (any optax transform; e.g. :func:`optzoo.ringmaster.ringmaster`,
        ``optzoo.muon``, ``optax.sgd``). Wrapped in :func:`optax.with_extra_args_support`;
        with ``pass_delay`` each update receives the arrival's ``delay=`` (int32).
      params: initial parameters ``x_0``.
      grad_fn: ``(params, key) -> (loss, grads)``: one stochastic gradient (a worker's job);
        ``key`` is this job's PRNG key. Jitted here.
      times: the workers' compute-time profile.
      delay_threshold: ``R``: ``None`` (∞: plain asynchronous training), a number ``>= 1``,
        ``'agnostic'`` (``max(1, ⌊√k⌋)``) or a callable ``k -> R_k``. Ignored when
        ``synchronous``.
      cancel_stale: cancel and restart workers whose delay reached ``R_k`` right after each
        update (with calculation stops) instead of discarding their gradient on arrival.
      synchronous: synchronous minibatch baseline (module docstring).
      batch_size: Rennala SGD with batch size ``S`` (module docstring): collect ``S``
        gradients at the current iterate from whichever workers finish first, apply their
        average, restart everyone. Ignores ``delay_threshold``/``cancel_stale``.
      max_updates: stop after this many applied updates.
      max_time: stop at this simulated time.
      max_grads: stop after this many completed gradient computations.
      eval_fn: ``params -> scalar loss`` logged in ``history`` (jitted here).
      eval_interval: log every ``eval_interval`` units of simulated time (plus at 0 and at
        the end).
      eval_every: log every ``eval_every`` applied updates.
      seed: seeds both the compute-time draws and the job keys.
      pass_delay: pass ``delay=`` to ``tx.update``.
      record_params: keep the parameters after every applied update.

    Returns:
      A :class:`SimulationResult`. If ``tx`` is wrapped in
      :func:`optzoo.ringmaster.discard_stale`, arrivals it rejects count as discarded.

    Raises:
      ValueError: no stopping criterion, or a bad ``delay_threshold``/interval.
    """
    if max_updates is None and max_time is None and max_grads is None:
        raise ValueError("simulate: give at least one of max_updates, max_time, max_grads")
    if eval_interval is not None and not eval_interval > 0:
        raise ValueError(f"simulate: eval_interval must be > 0, got {eval_interval}")
    if eval_every is not None and not (isinstance(eval_every, int) and eval_every >= 1):
        raise ValueError(f"simulate: eval_every must be an int >= 1, got {eval_every}")
    delay_threshold_at(delay_threshold, 0)  # validates the spec early
    if batch_size is not None:
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1
        ):
            raise ValueError(f"simulate: batch_size must be an int >= 1, got {batch_size!r}")
        if synchronous:
            raise ValueError("simulate: give synchronous=True or batch_size, not both")
    n = times.n_workers
    rng = np.random.default_rng(seed)
    key0 = jax.random.PRNGKey(seed)
    txe = optax.with_extra_args_support(tx)
    grad_jit = _jitted(grad_fn, "grad")

    def grad_job(p, job):
        return grad_jit(p, key0, job)

    step = _jitted_step(tx, pass_delay)
    eval_jit = _jitted(eval_fn, "eval") if eval_fn is not None else None
    state = txe.init(params)
    gated = isinstance(state, DiscardStaleState)
    res = SimulationResult(
        params=params, opt_state=state, applied_per_worker=[0] * n, computed_per_worker=[0] * n
    )
    next_eval = [0.0 if eval_interval is not None else math.inf]

    def log(t):
        loss = None if eval_jit is None else float(eval_jit(res.params))
        res.history.append(
            {
                "time": float(t),
                "updates": res.updates,
                "grads_computed": res.grads_computed,
                "grads_discarded": res.grads_discarded,
                "jobs_cancelled": res.jobs_cancelled,
                "loss": loss,
            }
        )

    def log_until(t):
        while next_eval[0] <= t and (max_time is None or next_eval[0] <= max_time):
            log(next_eval[0])
            next_eval[0] += eval_interval

    def apply(g, delay, worker, job, loss, now, threshold, workers=None):
        workers = [worker] if workers is None else list(workers)
        new_params, new_state = step(res.params, res.opt_state, g, jnp.asarray(delay, jnp.int32))
        if gated and int(new_state.discarded) > int(res.opt_state.discarded):
            res.opt_state = new_state  # the wrapped rule rejected it: params unchanged
            res.grads_discarded += len(workers)
            return
        res.params, res.opt_state = new_params, new_state
        res.updates += 1
        res.grads_applied += len(workers)
        for w in workers:
            res.applied_per_worker[w] += 1
        res.trace.append(
            {
                "time": float(now),
                "worker": worker,
                "job": job,
                "delay": int(delay),
                "threshold": float(threshold),
                "loss": float(loss),
                "workers": workers,
            }
        )
        if record_params:
            res.params_trace.append(new_params)
        if eval_every is not None and res.updates % eval_every == 0:
            log(now)

    def done() -> bool:
        return (max_updates is not None and res.updates >= max_updates) or (
            max_grads is not None and res.grads_computed >= max_grads
        )

    if eval_interval is None and eval_every is not None:
        log(0.0)
    next_job = 0
    now = 0.0
    if synchronous:
        while not done():
            durations = [times.sample(i, rng) for i in range(n)]
            finish = now + max(durations)
            if max_time is not None and finish > max_time:
                break
            log_until(finish)
            results = [grad_job(res.params, jnp.asarray(next_job + i, jnp.int32)) for i in range(n)]
            next_job += n
            now = finish
            res.grads_computed += n
            for i in range(n):
                res.computed_per_worker[i] += 1
            loss = float(np.mean([float(r[0]) for r in results]))
            apply(
                _tree_mean([r[1] for r in results]),
                0,
                -1,
                next_job - n,
                loss,
                now,
                1.0,
                workers=range(n),
            )
    elif batch_size is not None:
        heap: list[tuple[float, int, int]] = []
        started = [0.0] * n
        current = [-1] * n

        def start_at(i, t):
            nonlocal next_job
            current[i], started[i] = next_job, t
            heapq.heappush(heap, (t + times.sample(i, rng), i, next_job))
            next_job += 1

        for i in range(n):
            start_at(i, 0.0)
        batch: list[tuple[Any, int, int, float]] = []
        while not done():
            t, i, job = heapq.heappop(heap)
            if current[i] != job:
                continue  # a job cancelled by the last round's restart
            if max_time is not None and t > max_time:
                break
            log_until(t)
            now = t
            loss, g = grad_job(res.params, jnp.asarray(job, jnp.int32))
            res.grads_computed += 1
            res.computed_per_worker[i] += 1
            batch.append((g, i, job, float(loss)))
            if len(batch) < batch_size:
                start_at(i, now)  # another gradient at the same iterate
                continue
            apply(
                _tree_mean([b[0] for b in batch]),
                0,
                -1,
                batch[0][2],
                float(np.mean([b[3] for b in batch])),
                now,
                1.0,
                workers=[b[1] for b in batch],
            )
            batch = []
            heap.clear()
            for j in range(n):  # everyone restarts at the new iterate
                if j != i and started[j] < now:
                    res.jobs_cancelled += 1
                start_at(j, now)
    else:
        jobs: list[tuple[int, int, Any]] = [None] * n  # (job id, k at start, snapshot)
        heap: list[tuple[float, int, int]] = []

        def start(i, t):
            nonlocal next_job
            jobs[i] = (next_job, res.updates, res.params)
            heapq.heappush(heap, (t + times.sample(i, rng), i, next_job))
            next_job += 1

        for i in range(n):
            start(i, 0.0)
        while not done():
            t, i, job = heapq.heappop(heap)
            if jobs[i][0] != job:
                continue  # a cancelled job's stale heap entry
            if max_time is not None and t > max_time:
                break
            log_until(t)
            now = t
            _, k_start, snapshot = jobs[i]
            delay = res.updates - k_start
            threshold = delay_threshold_at(delay_threshold, res.updates)
            res.grads_computed += 1
            res.computed_per_worker[i] += 1
            if delay < threshold:
                loss, g = grad_job(snapshot, jnp.asarray(job, jnp.int32))
                apply(g, delay, i, job, loss, now, threshold)
            else:
                res.grads_discarded += 1
            start(i, now)
            if cancel_stale:
                # The threshold of this arrival, R_k with k the count *before* its update
                # (the reference refreshes R only after cancelling; R_{k+1} here was an
                # off-by-one against it).
                for j in range(n):
                    if j != i and res.updates - jobs[j][1] >= threshold:
                        res.jobs_cancelled += 1
                        start(j, now)
    res.time = float(max_time if max_time is not None and not done() else now)
    if eval_interval is not None:
        log_until(res.time)
    if (
        not res.history
        or res.history[-1]["time"] != res.time
        or (res.history[-1]["updates"] != res.updates)
    ):
        log(res.time)
    return res
