"""The one content digest (featinv.fileio.sha256) against hashlib, the reference."""

import hashlib

import pytest

from featinv.fileio import sha256


def test_sha256_of_bytes_files_and_trees(tmp_path):
    assert sha256(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    (tmp_path / "t" / "sub").mkdir(parents=True)
    a, b = tmp_path / "t" / "a.bin", tmp_path / "t" / "sub" / "b.txt"
    a.write_bytes(bytes(range(256)) * 40)
    b.write_text("hello")
    assert sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()  # a file: what sha256sum prints
    expected = hashlib.sha256(b"a.bin\0" + sha256(a).encode() + b"sub/b.txt\0" + sha256(b).encode()).hexdigest()
    assert sha256(tmp_path / "t") == expected
    (tmp_path / "t" / "README.md").write_text("a note")
    assert sha256(tmp_path / "t", skip=("README.md",)) == expected != sha256(tmp_path / "t")
    with pytest.raises(TypeError, match="bytes or a path"):
        sha256("a.bin")  # a str is neither: text is encoded by the caller, a path wrapped in Path


def test_sha256_ends_reads_only_the_ends_of_a_large_file(tmp_path):
    f = tmp_path / "w.bin"
    data = bytearray(10_000)
    f.write_bytes(bytes(data))
    whole, sampled = sha256(f), sha256(f, ends=1000)
    assert sampled == hashlib.sha256(b"10000\0" + bytes(1000) + bytes(1000)).hexdigest()
    data[5000] = 1  # a change in the middle: seen by the full digest only
    f.write_bytes(bytes(data))
    assert sha256(f, ends=1000) == sampled and sha256(f) != whole
    data[-1] = 1  # at an end: seen by both
    f.write_bytes(bytes(data))
    assert sha256(f, ends=1000) != sampled
    assert sha256(f, ends=10_000) == sha256(f)  # small enough: read whole
