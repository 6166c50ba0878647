"""Token-shard files: the headered formats of modded-nanogpt / llm.c / the seed paper, and
headerless raw tokens.

**Token shards** (:func:`read_shard`, :func:`write_shard`): a 256 x int32 little-endian
header (1024 bytes) then the tokens; the reader dispatches on ``header[0]`` (the magic)
through the table :data:`SHARD_FORMATS` (adding a format is one entry there):

=============  ==========  =======  ========================================================
name           magic       version  layout
=============  ==========  =======  ========================================================
``v1``         20240520    1        modded-nanogpt / llm.c GPT-2 shards: [2] = N, uint16
``llama3``     20240801    7        llm.c LLaMA-3 shards: [2] = N, uint32
``v2``         20260317    2        seed paper (Lau & Su, ``hf_dataset_to_bin.py``): [2] = N,
                                    [3] = bytes per token (2 or 4), [4] = document delimiter
                                    id or -1, [5] / [6] = delimiter prepended / appended
=============  ==========  =======  ========================================================

A file must be exactly ``1024 + N * bytes_per_token`` bytes. Headerless files (nanoGPT's
``train.bin``) are read only when asked for explicitly with ``format="raw_uint16"`` (or
``"raw_uint32"``); an unknown magic is an error, never silently raw.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "HEADER_INTS",
    "HEADER_BYTES",
    "ShardFormat",
    "ShardHeader",
    "SHARD_FORMATS",
    "read_shard_header",
    "read_shard",
    "write_shard",
    "open_shards",
]

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


@dataclasses.dataclass(frozen=True)
class ShardFormat:
    """One headered token-shard format.

    Attributes:
      name: short name (``format=`` argument of :func:`read_shard` / :func:`write_shard`).
      magic: ``header[0]``. version: required ``header[1]``.
      token_bytes: fixed bytes per token, or ``None`` when ``header[3]`` gives it.
      allowed_token_bytes: accepted values of ``header[3]`` when ``token_bytes`` is None.
      extra_fields: names of further header entries, read from index 3 (or 4) on.
    """

    name: str
    magic: int
    version: int
    token_bytes: int | None
    allowed_token_bytes: tuple[int, ...] = ()
    extra_fields: tuple[str, ...] = ()


SHARD_FORMATS: dict[int, ShardFormat] = {
    20240520: ShardFormat("v1", 20240520, 1, 2),
    20240801: ShardFormat("llama3", 20240801, 7, 4),
    20260317: ShardFormat(
        "v2", 20260317, 2, None, (2, 4), ("delimiter", "delimiter_prepended", "delimiter_appended")
    ),
}
_FORMATS_BY_NAME = {f.name: f for f in SHARD_FORMATS.values()}
_RAW_FORMATS = {"raw_uint16": np.dtype("<u2"), "raw_uint32": np.dtype("<u4")}
_TOKEN_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


@dataclasses.dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one shard file."""

    path: str
    format: str
    version: int
    n_tokens: int
    dtype: np.dtype
    offset: int
    extra: tuple[tuple[str, int], ...] = ()


def _known_formats() -> str:
    return ", ".join(f"{f.name} (magic {m}, version {f.version})" for m, f in SHARD_FORMATS.items())


def read_shard_header(path: str | os.PathLike) -> ShardHeader:
    """Parses and checks the 1024-byte header of a shard (see the module docstring).

    Raises:
      FileNotFoundError: the path does not exist.
      ValueError: the file is shorter than a header, has an unknown magic or version, an
        invalid token width, or a size that disagrees with its token count. The message names
        the file and what was expected.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"token shard {str(p)!r} does not exist")
    size = p.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(
            f"token shard {str(p)!r} is {size} bytes, shorter than the "
            f"{HEADER_BYTES}-byte header (256 int32) of the formats "
            f"{_known_formats()}; for a headerless file pass format='raw_uint16'"
        )
    header = np.fromfile(p, dtype="<i4", count=HEADER_INTS)
    magic, version, n_tokens = int(header[0]), int(header[1]), int(header[2])
    fmt = SHARD_FORMATS.get(magic)
    if fmt is None:
        raise ValueError(
            f"token shard {str(p)!r} has magic number {magic} in header[0]; "
            f"expected one of {_known_formats()}. For a headerless file of raw "
            "tokens pass format='raw_uint16' or 'raw_uint32'"
        )
    if version != fmt.version:
        raise ValueError(
            f"token shard {str(p)!r} ({fmt.name}, magic {magic}) has version "
            f"{version} in header[1]; expected {fmt.version}"
        )
    if n_tokens < 0:
        raise ValueError(
            f"token shard {str(p)!r} declares {n_tokens} tokens in header[2]; "
            "expected a non-negative count"
        )
    first_extra = 3
    if fmt.token_bytes is None:
        width = int(header[3])
        if width not in fmt.allowed_token_bytes:
            raise ValueError(
                f"token shard {str(p)!r} ({fmt.name}) declares {width} bytes per "
                f"token in header[3]; expected one of {fmt.allowed_token_bytes}"
            )
        first_extra = 4
    else:
        width = fmt.token_bytes
    expected = HEADER_BYTES + n_tokens * width
    if size != expected:
        raise ValueError(
            f"token shard {str(p)!r} ({fmt.name}) is {size} bytes; expected "
            f"{expected} = {HEADER_BYTES} header + {n_tokens} tokens x {width} "
            "bytes (truncated or corrupt file)"
        )
    extra = tuple((name, int(header[first_extra + i])) for i, name in enumerate(fmt.extra_fields))
    return ShardHeader(
        str(p), fmt.name, version, n_tokens, _TOKEN_DTYPES[width], HEADER_BYTES, extra
    )


def read_shard(path: str | os.PathLike, format: str = "auto", mmap: bool = True) -> np.ndarray:
    """Tokens of one shard as a 1-D array (``np.memmap`` by default, read-only).

    Args:
      path: the file.
      format: ``"auto"`` dispatches on the magic; a format name (``"v1"``, ``"llama3"``,
        ``"v2"``) additionally requires that format; ``"raw_uint16"`` / ``"raw_uint32"``
        reads a headerless file of little-endian tokens (nanoGPT ``train.bin``).
      mmap: memory-map instead of reading into memory.
    """
    p = Path(path)
    if format in _RAW_FORMATS:
        if not p.is_file():
            raise FileNotFoundError(f"token shard {str(p)!r} does not exist")
        dtype = _RAW_FORMATS[format]
        size = p.stat().st_size
        if size % dtype.itemsize:
            raise ValueError(
                f"raw token file {str(p)!r} is {size} bytes, not a multiple of "
                f"{dtype.itemsize} ({format})"
            )
        n, offset = size // dtype.itemsize, 0
    elif format == "auto" or format in _FORMATS_BY_NAME:
        h = read_shard_header(p)
        if format != "auto" and h.format != format:
            raise ValueError(
                f"token shard {str(p)!r} is in format {h.format!r}; expected {format!r}"
            )
        dtype, n, offset = h.dtype, h.n_tokens, h.offset
    else:
        raise ValueError(
            f"read_shard: format={format!r}; expected 'auto', one of "
            f"{sorted(_FORMATS_BY_NAME)} or {sorted(_RAW_FORMATS)}"
        )
    if n == 0:
        return np.zeros((0,), dtype)
    if mmap:
        return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=(n,))
    with open(p, "rb") as f:
        f.seek(offset)
        return np.fromfile(f, dtype=dtype, count=n)


def write_shard(
    path: str | os.PathLike,
    tokens,
    format: str = "v1",
    *,
    bytes_per_token: int | None = None,
    delimiter: int = -1,
    delimiter_prepended: bool = False,
    delimiter_appended: bool = False,
) -> Path:
    """Writes ``tokens`` as one shard (default the modded-nanogpt / llm.c ``v1`` format).

    The file is written to a temporary name and renamed, so a reader never sees half a
    shard. ``bytes_per_token`` and the delimiter fields apply to ``v2`` only (default width:
    2 if every id fits in uint16, else 4).

    Raises:
      ValueError: an id is negative or does not fit the format's token width.
    """
    if format not in _FORMATS_BY_NAME:
        raise ValueError(
            f"write_shard: format={format!r}; expected one of {sorted(_FORMATS_BY_NAME)}"
        )
    fmt = _FORMATS_BY_NAME[format]
    arr = np.asarray(tokens)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"write_shard({str(path)!r}): tokens must be a 1-D integer array; got "
            f"shape {arr.shape} dtype {arr.dtype}"
        )
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if fmt.token_bytes is None:
        width = bytes_per_token or (2 if hi < 2**16 else 4)
        if width not in fmt.allowed_token_bytes:
            raise ValueError(
                f"write_shard: bytes_per_token={width}; expected one of "
                f"{fmt.allowed_token_bytes} for format {format!r}"
            )
    else:
        width = fmt.token_bytes
    if lo < 0 or hi >= 2 ** (8 * width):
        raise ValueError(
            f"write_shard({str(path)!r}): token ids span [{lo}, {hi}], which does "
            f"not fit the {8 * width}-bit unsigned tokens of format {format!r}"
        )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = fmt.magic, fmt.version, arr.size
    if fmt.token_bytes is None:
        header[3] = width
        header[4:7] = delimiter, int(delimiter_prepended), int(delimiter_appended)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(arr.astype(_TOKEN_DTYPES[width]).tobytes())
    os.replace(tmp, p)
    return p


def open_shards(
    spec: str | os.PathLike | Sequence[str | os.PathLike], format: str = "auto"
) -> tuple[list[np.ndarray], list[Path]]:
    """Memory-maps the shards named by ``spec``: a file, a directory (its ``*.bin`` files), a
    glob pattern, or a list of files; sorted by path. Returns ``(arrays, paths)``.

    Raises:
      FileNotFoundError: the path does not exist or the pattern matches nothing.
    """
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if Path(s).is_dir():
            paths = sorted(Path(s).glob("*.bin"))
            if not paths:
                raise FileNotFoundError(f"data directory {s!r} contains no *.bin shards")
        elif Path(s).is_file():
            paths = [Path(s)]
        elif glob.has_magic(s):
            paths = sorted(Path(p) for p in glob.glob(s))
            if not paths:
                raise FileNotFoundError(f"data pattern {s!r} matches no files")
        else:
            raise FileNotFoundError(f"data path {s!r} does not exist")
    else:
        paths = [Path(p) for p in spec]
        if not paths:
            raise FileNotFoundError("open_shards: empty list of data paths")
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"data path {str(p)!r} does not exist")
    return [read_shard(p, format) for p in paths], paths
