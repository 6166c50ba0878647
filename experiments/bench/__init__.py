"""Benchmarks of the optimizers (``python -m experiments.bench.<name>``); each writes its result
as JSON with :func:`write_result`."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["write_result"]


def write_result(path: str | os.PathLike, result: Any, indent: int = 1) -> str:
    """Writes ``result`` as JSON to ``path`` (parent directories created); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=indent)
    return path
