"""Corpora, byte-level tokens, token-shard files and a deterministic, resumable loader.

Three modules, one concern each; their public names are re-exported here
(``experiments.data.TokenLoader`` etc.):

* :mod:`experiments.data.corpora` — the embedded default corpus (the interpreter's
  standard-library sources as bytes, no download), the optional Shakespeare corpus, byte
  tokens and the train / validation split;
* :mod:`experiments.data.shards` — token-shard files (modded-nanogpt / llm.c ``v1``,
  ``llama3``, the seed paper's ``v2``, headerless raw tokens): read, write, open by spec;
* :mod:`experiments.data.loader` — the resumable window loader over shards
  (:class:`TokenLoader`, :class:`LoaderState`, :func:`next_batch`) and the fixed validation
  set (:func:`validation_batches`).
"""

from experiments.data import corpora, loader, shards
from experiments.data.corpora import *  # noqa: F403
from experiments.data.loader import *  # noqa: F403
from experiments.data.shards import *  # noqa: F403

__all__ = ["corpora", "loader", "shards", *corpora.__all__, *shards.__all__, *loader.__all__]
