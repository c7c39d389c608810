"""The committed copies of Flink's vectors are byte-for-byte what Flink produced."""

import hashlib
import pathlib

VECTORS = pathlib.Path(__file__).parent / "vectors"


def test_vectors_match_their_checksums():
    lines = (VECTORS / "SHA256SUMS").read_text().split("\n")
    entries = [line.split() for line in lines if line.strip()]
    assert len(entries) >= 5
    for digest, name in entries:
        assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == digest, name
