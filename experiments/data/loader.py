"""A deterministic, resumable loader of token windows over shards, and the fixed validation
set.

**Loader.** Shards are visited in order, epoch after epoch. Each shard of ``n`` tokens is
cut into ``(n - 1) // T`` windows of ``T + 1`` tokens at stride ``T`` (inputs and targets
shifted by one). One global step takes the next ``P * B`` windows of the shard's window
order; process ``p`` of ``P`` gets rows ``p B .. p B + B - 1``, returned as ``inputs``,
``targets`` int32 ``[B, T]``, so the processes' batches are disjoint and together form one
global batch of ``P B`` rows. When fewer than ``P B`` windows are left the stream moves to
the next shard and, after the last, to ``epoch + 1``. The window order is either the
identity (``shuffle=False``: the contiguous modded-nanogpt stream, right for pre-shuffled
corpora such as FineWeb) or a hash permutation of (seed, shard, epoch) (``shuffle=True``,
the :class:`TokenLoader` default: each window once per epoch, batches mixing distant parts
of the shard, which a corpus made of long source files needs). The whole position is the
:class:`LoaderState` (shard, offset, epoch, process index/count): :func:`next_batch` is a
pure function of it and of the loader arguments, so checkpointing the state and resuming
reproduces the stream exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from experiments.data.shards import open_shards

__all__ = ["LoaderState", "next_batch", "window_order", "TokenLoader", "validation_batches"]


class LoaderState(NamedTuple):
    """The loader's whole position: save it with a checkpoint, pass it back to resume.

    Attributes:
      shard: index of the current shard. offset: start of the next global step in it.
      epoch: completed passes over all shards.
      process_index, process_count: which slice of each global step this process reads.
    """

    shard: int = 0
    offset: int = 0
    epoch: int = 0
    process_index: int = 0
    process_count: int = 1


def _check_state(state: LoaderState, n_shards: int) -> None:
    if not 0 <= state.process_index < state.process_count:
        raise ValueError(
            f"LoaderState: process_index={state.process_index} must lie in "
            f"[0, process_count={state.process_count})"
        )
    if not 0 <= state.shard < n_shards:
        raise ValueError(f"LoaderState: shard={state.shard} out of range for {n_shards} shards")
    if state.offset < 0 or state.epoch < 0:
        raise ValueError(f"LoaderState: offset={state.offset} and epoch={state.epoch} must be >= 0")


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer (Steele, Lea & Flood 2014), vectorized over uint64."""
    with np.errstate(over="ignore"):
        z = (np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=8)
def window_order(n_windows: int, seed: int, shard: int, epoch: int) -> np.ndarray:
    """The shuffled order of the ``n_windows`` windows of one shard in one epoch:
    ``argsort(splitmix64(key + i))`` with ``key`` mixed from (seed, shard, epoch). Defined by
    this code alone (no NumPy generator whose stream could change between versions)."""
    key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    key = _splitmix64(key ^ np.uint64(shard))
    key = _splitmix64(key ^ np.uint64(epoch))
    with np.errstate(over="ignore"):
        keys = _splitmix64(key + np.arange(n_windows, dtype=np.uint64))
    order = np.argsort(keys, kind="stable")
    order.setflags(write=False)
    return order


def next_batch(
    shards: Sequence[np.ndarray],
    state: LoaderState,
    batch_size: int,
    seq_len: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
) -> tuple[tuple[np.ndarray, np.ndarray], LoaderState]:
    """The next ``(inputs, targets)`` (int32 ``[batch_size, seq_len]``) of this process, and
    the state after it. A pure function of its arguments (see the module docstring).

    Each shard of ``n`` tokens is cut into ``W = (n - 1) // seq_len`` windows; window ``c``
    is tokens ``[c T, c T + T + 1)`` (inputs and the shifted targets). A global step takes
    ``P * B`` consecutive entries of the shard's window order, starting at
    ``state.offset // T``; row ``r`` of process ``p`` is entry ``p B + r``. The order is the
    identity (``shuffle=False``: the sequential modded-nanogpt stream) or
    :func:`window_order` ``(W, seed, shard, epoch)`` (``shuffle=True``: every window once per
    epoch, in a new order each epoch; batches mix distant parts of the data, which matters
    for a corpus of long files such as the default one). ``state.offset`` counts tokens
    consumed in the current shard, ``P B T`` per step.

    Shards too short for one global step (``P * B * T + 1`` tokens) are skipped; if none is
    long enough this raises ``ValueError``.
    """
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(
            f"next_batch: batch_size={batch_size} and seq_len={seq_len} must be positive"
        )
    if not len(shards):
        raise ValueError("next_batch: no shards")
    _check_state(state, len(shards))
    if state.offset % seq_len:
        raise ValueError(
            f"next_batch: LoaderState.offset={state.offset} is not a multiple of "
            f"seq_len={seq_len} (state saved with another sequence length?)"
        )
    rows = state.process_count * batch_size
    shard, offset, epoch = state.shard, state.offset, state.epoch
    for _ in range(len(shards) + 1):
        if offset // seq_len + rows <= (len(shards[shard]) - 1) // seq_len:
            break
        shard, offset = shard + 1, 0
        if shard == len(shards):
            shard, epoch = 0, epoch + 1
    else:
        raise ValueError(
            f"next_batch: no shard holds one global step of {rows * seq_len + 1} "
            f"tokens (process_count {state.process_count} x batch {batch_size} x "
            f"seq {seq_len} + 1); shard lengths {[len(s) for s in shards]}"
        )
    first = offset // seq_len + state.process_index * batch_size
    entries = np.arange(first, first + batch_size)
    if shuffle:
        n_windows = (len(shards[shard]) - 1) // seq_len
        entries = window_order(n_windows, int(seed), shard, epoch)[entries]
    src = shards[shard]
    if not shuffle:  # one contiguous read
        start = int(entries[0]) * seq_len
        flat = np.asarray(src[start : start + batch_size * seq_len + 1]).astype(np.int32)
        inputs = flat[:-1].reshape(batch_size, seq_len)
        targets = flat[1:].reshape(batch_size, seq_len)
    else:
        win = np.stack(
            [np.asarray(src[c * seq_len : c * seq_len + seq_len + 1]) for c in entries.tolist()]
        ).astype(np.int32)
        inputs, targets = win[:, :-1], win[:, 1:]
    new_state = state._replace(shard=shard, offset=offset + rows * seq_len, epoch=epoch)
    return (inputs, targets), new_state


class TokenLoader:
    """Iterator over :func:`next_batch` with ``get_state`` / ``set_state`` for checkpoints.

    Args:
      source: a 1-D token array, a list of them, or a path spec for :func:`open_shards`.
      batch_size, seq_len: per-process batch shape.
      process_index, process_count: this process's slice (``jax.process_index()`` /
        ``jax.process_count()`` in a multi-host run).
      state: resume from this :class:`LoaderState` (its process fields must match).
      shuffle, seed: window order (see :func:`next_batch`). The stream is determined by
        the state *and* these arguments plus batch_size / seq_len: resume with the same ones.

    Raises:
      ValueError: a shard (named) is too short for one global step.
    """

    def __init__(
        self,
        source,
        batch_size: int,
        seq_len: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        state: LoaderState | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ):
        if isinstance(source, np.ndarray):
            self.shards, self.names = [source], ["<array>"]
        elif isinstance(source, (str, os.PathLike)) or (
            isinstance(source, Sequence) and source and isinstance(source[0], (str, os.PathLike))
        ):
            self.shards, paths = open_shards(source)
            self.names = [str(p) for p in paths]
        else:
            self.shards = [np.asarray(s) for s in source]
            self.names = [f"<array {i}>" for i in range(len(self.shards))]
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        need = process_count * self.batch_size * self.seq_len + 1
        for name, s in zip(self.names, self.shards, strict=True):
            if s.ndim != 1 or len(s) < need:
                raise ValueError(
                    f"token shard {name} has shape {s.shape}; one global step "
                    f"needs a 1-D shard of at least {need} tokens (process_count "
                    f"{process_count} x batch {batch_size} x seq {seq_len} + 1)"
                )
        self._state = LoaderState(process_index=process_index, process_count=process_count)
        _check_state(self._state, len(self.shards))
        if state is not None:
            self.set_state(state)

    def get_state(self) -> LoaderState:
        return self._state

    def set_state(self, state: LoaderState) -> None:
        state = LoaderState(*state)
        if (state.process_index, state.process_count) != (
            self._state.process_index,
            self._state.process_count,
        ):
            raise ValueError(
                f"TokenLoader.set_state: state is for process "
                f"{state.process_index}/{state.process_count}; this loader is "
                f"{self._state.process_index}/{self._state.process_count}"
            )
        _check_state(state, len(self.shards))
        self._state = state

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        batch, self._state = next_batch(
            self.shards,
            self._state,
            self.batch_size,
            self.seq_len,
            shuffle=self.shuffle,
            seed=self.seed,
        )
        return batch

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.next()


def validation_batches(
    tokens,
    batch_size: int,
    seq_len: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    max_batches: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed validation set: consecutive windows over ``tokens`` from its start (no
    shuffle, no wrap-around), grouped in global steps, this process's slice of each; the
    same list on every call and run."""
    arr = np.asarray(tokens)
    step = process_count * batch_size * seq_len
    n = (len(arr) - 1) // step
    if max_batches is not None:
        n = min(n, max_batches)
    if n <= 0:
        raise ValueError(
            f"validation_batches: {len(arr)} tokens hold no global step of "
            f"{step + 1} tokens (process_count x batch x seq + 1)"
        )
    state = LoaderState(process_index=process_index, process_count=process_count)
    out = []
    for _ in range(n):
        batch, state = next_batch([arr], state, batch_size, seq_len, shuffle=False)
        out.append(batch)
    return out
