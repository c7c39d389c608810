"""Key groups exactly as Flink assigns them: ``flinknet._core.keygroups``.

Flink's ``KeyGroupRangeAssignment`` and ``MathUtils.murmurHash`` with Java ``hashCode`` emulation
(Integer, Long, String over UTF-16 code units, Boolean, and ``Arrays.hashCode(byte[])``). Checked
against:

* every entry of Flink 2.3's own vectors (``tests/vectors/key_groups.json``): Java hash codes,
  murmur hashes, key groups for max parallelism 128 and 32768, operator indexes for parallelism
  1..8, the default max parallelism table and the key group → operator tables;
* pure-Python references written here (Java ``String.hashCode`` over UTF-16 code units,
  ``Long.hashCode``, a port of ``murmurHash`` in 32-bit wrap-around arithmetic, and its inverse to
  reach murmur's sign branches, ``Arrays.hashCode(byte[])``), compared with hypothesis;
* the vectorized ``key_groups_array`` / ``operator_indexes_array`` against the scalar functions
  (dtypes, key_type overrides, empty, non-contiguous, byte-swapped and read-only input);
* argument validation as Flink's preconditions (``0 < maxParallelism <= 32768``,
  ``0 < parallelism <= maxParallelism``) and the key type rules (the default key_type: str →
  String, int → Integer if it fits in 32 bits else Long, bool → Boolean, bytes-like → byte[];
  unsupported keys rejected with TypeError; ``hash_code()`` objects);
* ``compute_key_group_range_for_operator_index`` against the operator index of every key group.
"""

from __future__ import annotations

import decimal
import enum
import fractions
import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flinknet._core import keygroups as kg
from flinknet._core.keygroups import (
    KeyGroupRange,
    assign_key_to_parallel_operator,
    assign_to_key_group,
    compute_default_max_parallelism,
    compute_key_group_for_key_hash,
    compute_key_group_range_for_operator_index,
    compute_operator_index_for_key_group,
    java_hash_code,
    key_groups_array,
    key_groups_of,
    key_groups_of_slices,
    murmur_hash,
    operator_indexes_array,
    operator_indexes_of,
    operator_indexes_of_slices,
)

VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "key_groups.json").read_text(encoding="utf-8"))
KEYS = VECTORS["keys"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MASK32 = 0xFFFFFFFF

int32s = st.integers(INT32_MIN, INT32_MAX)
int64s = st.integers(INT64_MIN, INT64_MAX)
max_parallelisms = st.integers(1, 32768)


# ------------------------------------------------------------------------------------------------
# Pure-Python references
# ------------------------------------------------------------------------------------------------

def to_int32(value: int) -> int:
    """Java's (int) cast: the low 32 bits as a two's complement int."""
    value &= MASK32
    return value - (1 << 32) if value & 0x80000000 else value


def ref_string_hash(s: str) -> int:
    """Java ``String.hashCode``: ``h = 31 * h + c`` over the UTF-16 code units, in 32 bits."""
    units = s.encode("utf-16-le", "surrogatepass")
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i:i + 2], "little")) & MASK32
    return to_int32(h)


def ref_long_hash(v: int) -> int:
    """Java ``Long.hashCode``: ``(int) (v ^ (v >>> 32))``."""
    u = v & 0xFFFFFFFFFFFFFFFF
    return to_int32(u ^ (u >> 32))


def ref_bytes_hash(data: bytes) -> int:
    """``java.util.Arrays.hashCode(byte[])``: ``h = 31 * h + b`` over signed bytes, from 1."""
    h = 1
    for b in data:
        h = (31 * h + (b - 256 if b > 127 else b)) & MASK32
    return to_int32(h)


def ref_java_hash(key, key_type: str) -> int:
    if key_type == "int":
        assert INT32_MIN <= key <= INT32_MAX
        return key
    if key_type == "long":
        return ref_long_hash(key)
    return ref_string_hash(key)


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & MASK32


def _rotr32(x: int, r: int) -> int:
    return ((x >> r) | (x << (32 - r))) & MASK32


C1, C2, M1, M2, ADD = 0xCC9E2D51, 0x1B873593, 0x85EBCA6B, 0xC2B2AE35, 0xE6546B64


def ref_murmur_mixed(code: int) -> int:
    """Flink's murmurHash up to (and including) bitMix, as an unsigned 32-bit value."""
    h = code & MASK32
    h = (h * C1) & MASK32
    h = _rotl32(h, 15)
    h = (h * C2) & MASK32
    h = _rotl32(h, 13)
    h = (h * 5 + ADD) & MASK32
    h ^= 4
    h ^= h >> 16
    h = (h * M1) & MASK32
    h ^= h >> 13
    h = (h * M2) & MASK32
    h ^= h >> 16
    return h


def ref_murmur_hash(code: int) -> int:
    """``MathUtils.murmurHash(int)``: the mixed value if >= 0, its negation, or 0 for MIN_VALUE."""
    s = to_int32(ref_murmur_mixed(code))
    if s >= 0:
        return s
    if s != INT32_MIN:
        return -s
    return 0


def _unxorshift(y: int, shift: int) -> int:
    x = y
    for _ in range(32 // shift + 1):
        x = y ^ (x >> shift)
    return x & MASK32


def murmur_preimage(mixed: int) -> int:
    """The int32 code whose murmur mix (before the sign fix-up) is ``mixed``: every step inverts."""
    h = mixed & MASK32
    h = _unxorshift(h, 16)
    h = (h * pow(M2, -1, 1 << 32)) & MASK32
    h = _unxorshift(h, 13)
    h = (h * pow(M1, -1, 1 << 32)) & MASK32
    h = _unxorshift(h, 16)
    h ^= 4
    h = ((h - ADD) * pow(5, -1, 1 << 32)) & MASK32
    h = _rotr32(h, 13)
    h = (h * pow(C2, -1, 1 << 32)) & MASK32
    h = _rotr32(h, 15)
    h = (h * pow(C1, -1, 1 << 32)) & MASK32
    return to_int32(h)


def vector_id(entry: dict) -> str:
    return f"{entry['type']}:{entry['key']!r}"


def vector_key(entry: dict):
    return entry["key"] if entry["type"] == "string" else int(entry["key"])


# ------------------------------------------------------------------------------------------------
# Flink's vectors
# ------------------------------------------------------------------------------------------------

def test_vectors_cover_the_cases_this_module_relies_on():
    by_type = {t: [e for e in KEYS if e["type"] == t] for t in ("int", "long", "string")}
    assert len(KEYS) == 40
    assert all(by_type.values())
    strings = [e["key"] for e in by_type["string"]]
    assert "" in strings
    assert any(not s.isascii() for s in strings)
    assert any(any(ord(c) > 0xFFFF for c in s) for s in strings)  # a surrogate pair in Java
    assert len(VECTORS["murmur_hash"]) == 12
    assert len(VECTORS["compute_default_max_parallelism"]) == 20
    assert len(VECTORS["operator_index_for_key_group"]) == 6


def test_references_reproduce_flink_vectors():
    """The pure-Python references used below agree with Flink before they judge flinknet."""
    for e in KEYS:
        assert ref_java_hash(vector_key(e), e["type"]) == e["java_hash_code"], vector_id(e)
        assert ref_murmur_hash(e["java_hash_code"]) == e["murmur_hash_of_hash_code"], vector_id(e)
    for e in VECTORS["murmur_hash"]:
        assert ref_murmur_hash(e["input"]) == e["murmur_hash"]


@pytest.mark.parametrize("entry", KEYS, ids=vector_id)
def test_vector_java_hash_code(entry):
    key = vector_key(entry)
    assert java_hash_code(key, key_type=entry["type"]) == entry["java_hash_code"]
    if entry["type"] == "string":
        assert key.encode("utf-8").hex() == entry["utf8_hex"]
    if entry["type"] in ("int", "string"):
        # Strings and ints that fit in 32 bits need no key_type.
        assert java_hash_code(key) == entry["java_hash_code"]


@pytest.mark.parametrize("entry", KEYS, ids=vector_id)
def test_vector_murmur_hash_of_hash_code(entry):
    assert murmur_hash(entry["java_hash_code"]) == entry["murmur_hash_of_hash_code"]


@pytest.mark.parametrize("max_parallelism", [128, 32768])
@pytest.mark.parametrize("entry", KEYS, ids=vector_id)
def test_vector_key_group(entry, max_parallelism):
    expected = entry[f"key_group_maxp{max_parallelism}"]
    key = vector_key(entry)
    assert assign_to_key_group(key, max_parallelism, key_type=entry["type"]) == expected
    assert compute_key_group_for_key_hash(entry["java_hash_code"], max_parallelism) == expected


@pytest.mark.parametrize("max_parallelism", [128, 32768])
@pytest.mark.parametrize("entry", KEYS, ids=vector_id)
def test_vector_operator_indexes_for_parallelism_1_to_8(entry, max_parallelism):
    expected = entry[f"operator_index_maxp{max_parallelism}_p1_to_p8"]
    assert len(expected) == 8
    key = vector_key(entry)
    key_group = entry[f"key_group_maxp{max_parallelism}"]
    for parallelism, index in zip(range(1, 9), expected):
        assert assign_key_to_parallel_operator(
            key, max_parallelism, parallelism, key_type=entry["type"]) == index, parallelism
        assert compute_operator_index_for_key_group(
            max_parallelism, parallelism, key_group) == index, parallelism


@pytest.mark.parametrize("max_parallelism", [128, 32768])
@pytest.mark.parametrize(("key_type", "dtype"), [("int", np.int32), ("long", np.int64)])
def test_vector_keys_through_the_array_functions(key_type, dtype, max_parallelism):
    entries = [e for e in KEYS if e["type"] == key_type]
    keys = np.array([int(e["key"]) for e in entries], dtype=dtype)
    groups = key_groups_array(keys, max_parallelism)
    assert groups.tolist() == [e[f"key_group_maxp{max_parallelism}"] for e in entries]
    for parallelism in range(1, 9):
        indexes = operator_indexes_array(keys, max_parallelism, parallelism)
        assert indexes.tolist() == [
            e[f"operator_index_maxp{max_parallelism}_p1_to_p8"][parallelism - 1] for e in entries]


@pytest.mark.parametrize("entry", VECTORS["murmur_hash"], ids=lambda e: str(e["input"]))
def test_vector_murmur_hash(entry):
    assert murmur_hash(entry["input"]) == entry["murmur_hash"]


@pytest.mark.parametrize("entry", VECTORS["compute_default_max_parallelism"],
                         ids=lambda e: str(e["parallelism"]))
def test_vector_default_max_parallelism(entry):
    assert compute_default_max_parallelism(entry["parallelism"]) == entry["default_max_parallelism"]


@pytest.mark.parametrize("entry", VECTORS["operator_index_for_key_group"],
                         ids=lambda e: f"maxp{e['max_parallelism']}-p{e['parallelism']}")
def test_vector_operator_index_for_key_group_table(entry):
    max_parallelism, parallelism = entry["max_parallelism"], entry["parallelism"]
    table = entry[f"operator_index_for_key_group_0_to_{max_parallelism - 1}"]
    assert len(table) == max_parallelism
    actual = [compute_operator_index_for_key_group(max_parallelism, parallelism, g)
              for g in range(max_parallelism)]
    assert actual == table


# ------------------------------------------------------------------------------------------------
# Java hashCode emulation
# ------------------------------------------------------------------------------------------------

def test_constants():
    assert kg.DEFAULT_LOWER_BOUND == 128
    assert kg.UPPER_BOUND == 32768 == 1 << 15
    assert isinstance(kg.KEY_TYPES, tuple)
    assert set(kg.KEY_TYPES) == {"int", "long", "string", "boolean", "bytes"}


surrogate_halves = st.integers(0xD800, 0xDFFF).map(chr)
emoji = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
astral = st.characters(min_codepoint=0x10000)
any_text = st.text(st.one_of(st.characters(), emoji, astral, surrogate_halves), max_size=40)


@settings(max_examples=400, deadline=None)
@given(text=any_text)
def test_string_hash_code_is_java_string_hash_code_over_utf16_units(text):
    expected = ref_string_hash(text)
    assert java_hash_code(text) == expected
    assert java_hash_code(text, key_type="string") == expected
    assert assign_to_key_group(text, 128) == ref_murmur_hash(expected) % 128


@settings(max_examples=200, deadline=None)
@given(ch=astral)
def test_character_beyond_the_bmp_hashes_as_a_surrogate_pair(ch):
    high, low = ch.encode("utf-16-be")[:2], ch.encode("utf-16-be")[2:]
    high, low = int.from_bytes(high, "big"), int.from_bytes(low, "big")
    assert 0xD800 <= high < 0xDC00 <= low < 0xE000
    assert java_hash_code(ch) == 31 * high + low
    # Python's two-code-point string of the same surrogates is the same Java String.
    assert java_hash_code(chr(high) + chr(low)) == java_hash_code(ch)


@pytest.mark.parametrize(("text", "expected"), [
    ("", 0),
    ("a", 97),
    ("\uffff", 0xFFFF),
    ("\U0010ffff", 31 * 0xDBFF + 0xDFFF),
    ("😀", 31 * 0xD83D + 0xDE00),
    ("\ud800", 0xD800),  # a lone surrogate is one UTF-16 unit, as in Java
    ("polygenelubricants", INT32_MIN),
    ("aepdynhz", -1),  # -1 is also the C error value of the hash: must not be taken for an error
])
def test_string_hash_code_edge_cases(text, expected):
    assert ref_string_hash(text) == expected
    assert java_hash_code(text) == expected
    assert java_hash_code(text, key_type="string") == expected


def test_string_hash_wraps_in_32_bits_for_long_strings():
    text = "flink" * 10_000
    assert java_hash_code(text) == ref_string_hash(text)
    assert INT32_MIN <= java_hash_code(text) <= INT32_MAX


class Name(str):
    pass


class Word(enum.StrEnum):
    HELLO = "hello"


@pytest.mark.parametrize("key", [Name("hello"), Word.HELLO], ids=["str-subclass", "StrEnum"])
def test_str_subclass_hashes_as_its_string(key):
    """A str subclass (a StrEnum member, say) is a str: it hashes as its text."""
    assert isinstance(key, str) and key == "hello"
    assert java_hash_code(key) == 99162322  # "hello".hashCode(), Flink's vector
    assert java_hash_code(key, key_type="string") == 99162322
    assert assign_to_key_group(key, 128) == 35
    assert assign_key_to_parallel_operator(key, 32768, 8, key_type="string") == (
        31395 * 8 // 32768)


@settings(max_examples=500, deadline=None)
@given(value=int64s)
def test_long_hash_code_for_any_int64(value):
    assert java_hash_code(value, key_type="long") == ref_long_hash(value)


@settings(max_examples=300, deadline=None)
@given(value=int32s)
def test_int_hash_code_is_the_value(value):
    assert java_hash_code(value, key_type="int") == value


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0), (-1, 0), (1, 1), (2**32, 1), (2**32 + 5, 4), (INT64_MAX, INT32_MIN),
    (INT64_MIN, INT32_MIN), (INT32_MAX, INT32_MAX), (INT32_MIN, INT32_MAX), (-(2**32), -1),
])
def test_long_hash_code_known_values(value, expected):
    assert ref_long_hash(value) == expected
    assert java_hash_code(value, key_type="long") == expected


@settings(max_examples=500, deadline=None)
@given(value=int64s)
def test_default_key_type_for_ints(value):
    """Ints that fit in 32 bits hash as Integer, larger ones as Long."""
    expected = value if INT32_MIN <= value <= INT32_MAX else ref_long_hash(value)
    assert java_hash_code(value) == expected


@pytest.mark.parametrize(("value", "as_type"), [
    (INT32_MIN, "int"), (INT32_MAX, "int"), (-1, "int"), (0, "int"),
    (INT32_MAX + 1, "long"), (INT32_MIN - 1, "long"), (2**32, "long"), (-(2**32), "long"),
    (INT64_MAX, "long"), (INT64_MIN, "long"),
])
def test_default_key_type_boundaries(value, as_type):
    expected = ref_java_hash(value, as_type)
    assert java_hash_code(value) == expected
    assert java_hash_code(value) == java_hash_code(value, key_type=as_type)
    assert assign_to_key_group(value, 128) == ref_murmur_hash(expected) % 128


def test_default_key_type_distinguishes_integer_from_long():
    # -1 as an Integer hashes to -1, as a Long to 0: the default keeps small ints Integers.
    assert java_hash_code(-1) == -1
    assert java_hash_code(-1, key_type="long") == 0
    assert assign_to_key_group(-1, 128) == 80  # Flink's vector for Integer -1
    assert assign_to_key_group(-1, 128, key_type="long") == 94  # ... and for Long -1


def test_int_enum_keys_hash_as_their_value():
    class Color(enum.IntEnum):
        RED = 7

    assert java_hash_code(Color.RED) == 7
    assert assign_to_key_group(Color.RED, 128) == 113  # Flink's vector for Integer 7


class WithHashCode:
    def __init__(self, code):
        self.code = code

    def hash_code(self):
        return self.code


@pytest.mark.parametrize("code", [0, 1231, 1237, -1, INT32_MIN, INT32_MAX, 99162322])
def test_objects_with_hash_code_method_use_it(code):
    key = WithHashCode(code)
    assert java_hash_code(key) == code
    for max_parallelism in (128, 32768):
        expected_group = ref_murmur_hash(code) % max_parallelism
        assert assign_to_key_group(key, max_parallelism) == expected_group
        for parallelism in (1, 3, 8):
            assert assign_key_to_parallel_operator(key, max_parallelism, parallelism) == (
                expected_group * parallelism // max_parallelism)


def test_hash_code_object_routes_like_the_string_it_mimics():
    assert assign_to_key_group(WithHashCode(ref_string_hash("flink")), 128) == 98
    assert assign_to_key_group("flink", 128) == 98


@pytest.mark.parametrize("code", [INT32_MAX + 1, INT32_MIN - 1, 2**40])
def test_hash_code_outside_int32_is_rejected(code):
    with pytest.raises(OverflowError):
        java_hash_code(WithHashCode(code))


@pytest.mark.parametrize(("key", "expected"), [(True, 1231), (False, 1237)])
def test_bool_keys_hash_as_java_boolean(key, expected):
    """Boolean.hashCode is 1231/1237: a bool is not the Integer 1/0 it subclasses."""
    assert java_hash_code(key) == expected
    assert java_hash_code(key, key_type="boolean") == expected
    assert java_hash_code(key) != java_hash_code(int(key))
    for max_parallelism in (128, 32768):
        group = ref_murmur_hash(expected) % max_parallelism
        assert assign_to_key_group(key, max_parallelism) == group
        assert assign_key_to_parallel_operator(key, max_parallelism, 3) == (
            group * 3 // max_parallelism)


@pytest.mark.parametrize("key", ["false", "", None, 0.0, 1.5, b"", [True]],
                         ids=["str-false", "str-empty", "None", "float-zero", "float", "bytes",
                              "list"])
def test_key_type_boolean_needs_a_bool(key):
    """Like key_type='string' needs a str: a truthiness test would hash "false" as true and a
    missing (None) key as false, where Flink rejects null keys."""
    with pytest.raises(TypeError):
        java_hash_code(key, key_type="boolean")
    with pytest.raises(TypeError):
        assign_to_key_group(key, 128, key_type="boolean")


@pytest.mark.parametrize(("data", "expected"), [
    (b"", 1), (b"\x00", 31), (b"\xff", 30), (b"\x7f", 31 + 127), (b"\x80", 31 - 128),
    (b"ab", 31 * (31 + 97) + 98),
])
def test_bytes_keys_hash_as_java_arrays_hash_code(data, expected):
    assert ref_bytes_hash(data) == expected
    for key in (data, bytearray(data), memoryview(data)):
        assert java_hash_code(key) == expected
        assert java_hash_code(key, key_type="bytes") == expected
        assert assign_to_key_group(key, 128) == ref_murmur_hash(expected) % 128


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200))
def test_bytes_hash_matches_reference(data):
    expected = ref_bytes_hash(data)
    assert java_hash_code(data) == expected
    assert java_hash_code(bytearray(data), key_type="bytes") == expected
    assert assign_to_key_group(memoryview(data), 32768) == ref_murmur_hash(expected) % 32768


def test_bytes_hash_of_minus_one_is_not_an_error():
    # Arrays.hashCode is -1, the C error value of the hash function: must not be taken for one.
    assert ref_bytes_hash(b"abvhitll") == -1
    assert java_hash_code(b"abvhitll") == -1
    assert java_hash_code(b"abvhitll", key_type="bytes") == -1


@pytest.mark.parametrize("key", ["abc", 5, 1.5, None, ["a"]],
                         ids=["str", "int", "float", "None", "list"])
def test_key_type_bytes_needs_a_bytes_like(key):
    with pytest.raises(TypeError):
        java_hash_code(key, key_type="bytes")


# ------------------------------------------------------------------------------------------------
# murmurHash
# ------------------------------------------------------------------------------------------------

@settings(max_examples=2000, deadline=None)
@given(code=int32s)
def test_murmur_hash_is_non_negative_and_matches_the_port(code):
    result = murmur_hash(code)
    assert 0 <= result <= INT32_MAX
    assert result == ref_murmur_hash(code)


@pytest.mark.parametrize("code", [0, 1, -1, 2, INT32_MAX, INT32_MIN, 0x55555555, -0x55555556,
                                  1 << 30, -(1 << 30)])
def test_murmur_hash_matches_the_port_on_bit_patterns(code):
    assert murmur_hash(code) == ref_murmur_hash(code)


def test_murmur_preimage_inverts_the_mix():
    for code in (0, 1, -1, 12345, INT32_MIN, INT32_MAX):
        assert murmur_preimage(ref_murmur_mixed(code)) == code


@pytest.mark.parametrize(("mixed", "expected"), [
    (0x80000000, 0),            # Integer.MIN_VALUE: 0, not MIN_VALUE or its (overflowing) negation
    (0xFFFFFFFF, 1),            # -1 → 1
    (0x80000001, INT32_MAX),    # -MAX → MAX
    (0x7FFFFFFF, INT32_MAX),    # non-negative: as is
    (0x00000000, 0),
    (0xDEADBEEF, 0x100000000 - 0xDEADBEEF),
])
def test_murmur_hash_sign_branches(mixed, expected):
    code = murmur_preimage(mixed)
    assert ref_murmur_mixed(code) == mixed
    assert murmur_hash(code) == expected
    assert compute_key_group_for_key_hash(code, 32768) == expected % 32768


@pytest.mark.parametrize("code", [INT32_MAX + 1, INT32_MIN - 1, 2**64])
def test_murmur_hash_rejects_values_outside_int32(code):
    with pytest.raises(OverflowError):
        murmur_hash(code)
    with pytest.raises(OverflowError):
        compute_key_group_for_key_hash(code, 128)


# ------------------------------------------------------------------------------------------------
# Key groups and operator indexes
# ------------------------------------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(code=int32s, max_parallelism=max_parallelisms, data=st.data())
def test_key_group_and_operator_index_formulas(code, max_parallelism, data):
    parallelism = data.draw(st.integers(1, max_parallelism), label="parallelism")
    group = compute_key_group_for_key_hash(code, max_parallelism)
    assert group == ref_murmur_hash(code) % max_parallelism
    assert 0 <= group < max_parallelism
    assert assign_to_key_group(code, max_parallelism) == group
    assert assign_to_key_group(WithHashCode(code), max_parallelism) == group
    index = compute_operator_index_for_key_group(max_parallelism, parallelism, group)
    assert index == group * parallelism // max_parallelism
    assert 0 <= index < parallelism
    assert assign_key_to_parallel_operator(code, max_parallelism, parallelism) == index


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(any_text, int64s), max_parallelism=max_parallelisms, data=st.data())
def test_assignment_composes_hash_murmur_group_and_index(key, max_parallelism, data):
    parallelism = data.draw(st.integers(1, max_parallelism), label="parallelism")
    h = java_hash_code(key)
    group = assign_to_key_group(key, max_parallelism)
    assert group == compute_key_group_for_key_hash(h, max_parallelism)
    assert assign_key_to_parallel_operator(key, max_parallelism, parallelism) == (
        compute_operator_index_for_key_group(max_parallelism, parallelism, group))


@pytest.mark.parametrize(("max_parallelism", "parallelism"), [
    (1, 1), (128, 1), (128, 3), (128, 7), (128, 128), (100, 7), (32768, 1), (32768, 12),
    (32768, 14), (32768, 32767), (32768, 32768),
])
def test_operator_key_group_ranges_are_contiguous_and_match_flink(max_parallelism, parallelism):
    """Operator i owns key groups [ceil(i·maxP/p), ((i+1)·maxP − 1)/p], Flink's
    computeKeyGroupRangeForOperatorIndex."""
    indexes = [compute_operator_index_for_key_group(max_parallelism, parallelism, g)
               for g in range(max_parallelism)]
    assert indexes == sorted(indexes)
    owned: dict[int, list[int]] = {}
    for group, owner in enumerate(indexes):
        owned.setdefault(owner, []).append(group)
    assert sorted(owned) == list(range(parallelism))
    for i in range(parallelism):
        start = (i * max_parallelism + parallelism - 1) // parallelism
        end = ((i + 1) * max_parallelism - 1) // parallelism
        assert owned[i] == list(range(start, end + 1))  # contiguous, exactly Flink's range
        key_group_range = compute_key_group_range_for_operator_index(
            max_parallelism, parallelism, i)
        assert (key_group_range.start_key_group, key_group_range.end_key_group) == (start, end)
        assert list(key_group_range) == owned[i]
        assert len(key_group_range) == key_group_range.number_of_key_groups == end - start + 1


@pytest.mark.parametrize("entry", VECTORS["operator_index_for_key_group"],
                         ids=lambda e: f"maxp{e['max_parallelism']}-p{e['parallelism']}")
def test_key_group_ranges_partition_flinks_operator_index_table(entry):
    max_parallelism, parallelism = entry["max_parallelism"], entry["parallelism"]
    table = entry[f"operator_index_for_key_group_0_to_{max_parallelism - 1}"]
    covered = []
    for i in range(parallelism):
        key_group_range = compute_key_group_range_for_operator_index(
            max_parallelism, parallelism, i)
        assert all(table[g] == i for g in key_group_range)
        assert all(key_group_range.contains(g) == (table[g] == i) for g in range(max_parallelism))
        assert all((g in key_group_range) == (table[g] == i) for g in range(max_parallelism))
        covered.extend(key_group_range)
    assert covered == list(range(max_parallelism))


@settings(max_examples=200, deadline=None)
@given(key=st.one_of(any_text, int64s), max_parallelism=max_parallelisms, data=st.data())
def test_a_keys_operator_owns_its_key_group(key, max_parallelism, data):
    parallelism = data.draw(st.integers(1, max_parallelism), label="parallelism")
    group = assign_to_key_group(key, max_parallelism)
    owner = assign_key_to_parallel_operator(key, max_parallelism, parallelism)
    assert group in compute_key_group_range_for_operator_index(max_parallelism, parallelism, owner)


def test_key_group_range_value_semantics():
    r = compute_key_group_range_for_operator_index(128, 3, 1)
    assert r == KeyGroupRange(43, 85)
    assert hash(r) == hash(KeyGroupRange(43, 85))
    assert r != KeyGroupRange(43, 86) and r != (43, 85)
    assert repr(r) == "KeyGroupRange{startKeyGroup=43, endKeyGroup=85}"  # Flink's toString
    assert 42 not in r and 43 in r and 85 in r and 86 not in r
    empty = KeyGroupRange(0, -1)  # Flink's EMPTY_KEY_GROUP_RANGE
    assert len(empty) == 0 and list(empty) == [] and 0 not in empty


@pytest.mark.parametrize(("max_parallelism", "parallelism", "operator_index", "match"), [
    (128, 4, -1, "operator_index"), (128, 4, 4, "operator_index"), (1, 1, 1, "operator_index"),
    (128, 0, 0, "parallelism"), (128, 129, 0, "parallelism"),
    (0, 1, 0, "max_parallelism"), (32769, 1, 0, "max_parallelism"),
])
def test_key_group_range_for_operator_index_validation(max_parallelism, parallelism,
                                                       operator_index, match):
    with pytest.raises(ValueError, match=match):
        compute_key_group_range_for_operator_index(max_parallelism, parallelism, operator_index)


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (-1, -2), (5, 2)])
def test_key_group_range_rejects_invalid_bounds(start, end):
    with pytest.raises(ValueError):
        KeyGroupRange(start, end)


@settings(max_examples=100, deadline=None)
@given(max_parallelism=st.integers(1, 2048), data=st.data())
def test_every_operator_index_is_in_range(max_parallelism, data):
    parallelism = data.draw(st.integers(1, max_parallelism), label="parallelism")
    groups = np.arange(max_parallelism)
    indexes = [compute_operator_index_for_key_group(max_parallelism, parallelism, int(g))
               for g in groups]
    assert min(indexes) == 0 and max(indexes) == parallelism - 1
    keys = np.random.default_rng(max_parallelism).integers(INT32_MIN, INT32_MAX, 500, np.int32)
    arr = operator_indexes_array(keys, max_parallelism, parallelism)
    assert ((arr >= 0) & (arr < parallelism)).all()


@pytest.mark.parametrize("kind", ["int", "long", "string"])
def test_distribution_10000_random_keys_reach_every_operator(kind):
    rng = random.Random(20240601)
    if kind == "int":
        keys = [rng.randint(INT32_MIN, INT32_MAX) for _ in range(10_000)]
    elif kind == "long":
        keys = [rng.randint(INT64_MIN, INT64_MAX) for _ in range(10_000)]
    else:
        keys = [f"user-{rng.getrandbits(48):x}" for _ in range(10_000)]
    counts = [0, 0, 0, 0]
    for key in keys:
        index = assign_key_to_parallel_operator(key, 128, 4, key_type=kind)
        assert 0 <= index < 4
        counts[index] += 1
    assert all(counts), counts
    assert sum(counts) == 10_000
    if kind != "string":
        array = operator_indexes_array(
            np.array(keys, dtype=np.int32 if kind == "int" else np.int64), 128, 4)
        assert np.bincount(array, minlength=4).tolist() == counts


# ------------------------------------------------------------------------------------------------
# Vectorized: key_groups_array / operator_indexes_array
# ------------------------------------------------------------------------------------------------

def scalar_groups(keys, max_parallelism, key_type=None):
    return [assign_to_key_group(int(k), max_parallelism, key_type=key_type) for k in keys]


def scalar_indexes(keys, max_parallelism, parallelism, key_type=None):
    return [assign_key_to_parallel_operator(int(k), max_parallelism, parallelism,
                                            key_type=key_type) for k in keys]


def random_keys(dtype, n=2000, seed=1):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    keys = rng.integers(info.min, info.max, size=n, dtype=dtype, endpoint=True)
    edges = np.array([info.min, info.max, 0, 1], dtype=dtype)
    if info.min < 0:
        edges = np.concatenate([edges, np.array([-1], dtype=dtype)])
    return np.concatenate([edges, keys])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("max_parallelism", [1, 7, 128, 1000, 32768])
def test_int32_array_equals_scalar_integer_keys(seed, max_parallelism):
    keys = random_keys(np.int32, seed=seed)
    groups = key_groups_array(keys, max_parallelism)
    assert groups.dtype == np.int32
    assert groups.shape == keys.shape
    assert groups.tolist() == scalar_groups(keys, max_parallelism, "int")
    assert groups.tolist() == scalar_groups(keys, max_parallelism)  # the default rule agrees
    for parallelism in sorted({1, 2, 5, max_parallelism} & set(range(1, max_parallelism + 1))):
        indexes = operator_indexes_array(keys, max_parallelism, parallelism)
        assert indexes.dtype == np.int32
        assert indexes.tolist() == scalar_indexes(keys, max_parallelism, parallelism, "int")


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("max_parallelism", [1, 7, 128, 1000, 32768])
def test_int64_array_equals_scalar_long_keys(seed, max_parallelism):
    keys = random_keys(np.int64, seed=seed)
    groups = key_groups_array(keys, max_parallelism)
    assert groups.dtype == np.int32
    assert groups.tolist() == scalar_groups(keys, max_parallelism, "long")
    for parallelism in sorted({1, 3, 8, max_parallelism} & set(range(1, max_parallelism + 1))):
        indexes = operator_indexes_array(keys, max_parallelism, parallelism)
        assert indexes.tolist() == scalar_indexes(keys, max_parallelism, parallelism, "long")


def test_int64_array_hashes_as_long_even_for_small_values():
    keys = np.array([-1, -2, INT32_MIN], dtype=np.int64)
    assert key_groups_array(keys, 128).tolist() == scalar_groups(keys, 128, "long")
    assert key_groups_array(keys, 128).tolist() != scalar_groups(keys, 128, "int")


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(int32s, max_size=50), max_parallelism=max_parallelisms, data=st.data())
def test_arrays_equal_scalars_hypothesis(keys, max_parallelism, data):
    parallelism = data.draw(st.integers(1, max_parallelism), label="parallelism")
    for dtype, key_type in ((np.int32, "int"), (np.int64, "long")):
        arr = np.array(keys, dtype=dtype)
        assert key_groups_array(arr, max_parallelism).tolist() == (
            scalar_groups(keys, max_parallelism, key_type))
        assert operator_indexes_array(arr, max_parallelism, parallelism).tolist() == (
            scalar_indexes(keys, max_parallelism, parallelism, key_type))


def test_int32_array_with_key_type_long():
    keys = random_keys(np.int32)
    assert key_groups_array(keys, 128, key_type="long").tolist() == scalar_groups(keys, 128, "long")
    assert operator_indexes_array(keys, 128, 5, key_type="long").tolist() == (
        scalar_indexes(keys, 128, 5, "long"))
    # Negative keys differ between Integer and Long: the override is really applied.
    assert key_groups_array(keys, 128, key_type="long").tolist() != (
        key_groups_array(keys, 128).tolist())


def test_int64_array_with_key_type_int():
    keys = random_keys(np.int32).astype(np.int64)
    assert key_groups_array(keys, 128, key_type="int").tolist() == scalar_groups(keys, 128, "int")
    assert operator_indexes_array(keys, 32768, 7, key_type="int").tolist() == (
        scalar_indexes(keys, 32768, 7, "int"))
    assert key_groups_array(keys, 128, key_type="int").tolist() != (
        key_groups_array(keys, 128).tolist())


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.uint16, np.uint32])
def test_small_and_unsigned_arrays_equal_the_scalar_default_rule(dtype):
    keys = random_keys(dtype)
    for max_parallelism in (128, 32768):
        assert key_groups_array(keys, max_parallelism).tolist() == (
            scalar_groups(keys, max_parallelism))
        assert operator_indexes_array(keys, max_parallelism, 6).tolist() == (
            scalar_indexes(keys, max_parallelism, 6))
        assert key_groups_array(keys, max_parallelism, key_type="long").tolist() == (
            scalar_groups(keys, max_parallelism, "long"))


def test_uint64_array_within_int64_equals_the_scalar_default_rule():
    keys = np.random.default_rng(5).integers(0, INT64_MAX, 2000, dtype=np.uint64, endpoint=True)
    keys = np.concatenate([np.array([0, 1, INT32_MAX, INT32_MAX + 1, 2**32, INT64_MAX],
                                    dtype=np.uint64), keys])
    assert key_groups_array(keys, 128).tolist() == scalar_groups(keys, 128)
    assert key_groups_array(keys, 128, key_type="long").tolist() == scalar_groups(keys, 128, "long")
    assert operator_indexes_array(keys, 128, 3).tolist() == scalar_indexes(keys, 128, 3)


@pytest.mark.parametrize("key_type", [None, "long"])
@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_uint64_keys_beyond_java_long_are_rejected_like_the_scalar(value, key_type):
    keys = np.array([1, value], dtype=np.uint64)
    with pytest.raises(OverflowError):
        assign_to_key_group(value, 128, key_type=key_type)
    with pytest.raises(OverflowError):
        key_groups_array(keys, 128, key_type=key_type)
    with pytest.raises(OverflowError):
        operator_indexes_array(keys, 128, 4, key_type=key_type)


@pytest.mark.parametrize(("dtype", "value"), [
    (np.int64, INT32_MAX + 1), (np.int64, INT32_MIN - 1), (np.int64, INT64_MAX),
    (np.int64, INT64_MIN), (np.uint64, INT32_MAX + 1), (np.uint64, 2**64 - 1),
    (np.uint32, INT32_MAX + 1), (np.uint32, 2**32 - 1),
])
def test_array_key_type_int_rejects_keys_outside_int32(dtype, value):
    keys = np.array([0, value, 5], dtype=dtype)
    with pytest.raises(OverflowError):
        java_hash_code(value, key_type="int")
    with pytest.raises(OverflowError):
        key_groups_array(keys, 128, key_type="int")
    with pytest.raises(OverflowError):
        operator_indexes_array(keys, 128, 2, key_type="int")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                   np.uint32, np.uint64])
@pytest.mark.parametrize("key_type", [None, "int", "long"])
def test_empty_arrays(dtype, key_type):
    keys = np.array([], dtype=dtype)
    groups = key_groups_array(keys, 128, key_type=key_type)
    assert groups.shape == (0,) and groups.dtype == np.int32
    indexes = operator_indexes_array(keys, 128, 4, key_type=key_type)
    assert indexes.shape == (0,) and indexes.dtype == np.int32


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("view", ["step2", "reversed", "column", "fortran_column", "offset"])
def test_non_contiguous_input(dtype, view):
    base = random_keys(dtype, n=600, seed=9)
    if view == "step2":
        keys = base[::2]
    elif view == "reversed":
        keys = base[::-1]
    elif view == "column":
        keys = base[:600].reshape(200, 3)[:, 1]
    elif view == "fortran_column":
        keys = np.asfortranarray(base[:600].reshape(200, 3))[1, :]
    else:
        keys = base[1::3]
    assert not keys.flags.c_contiguous or view == "fortran_column"
    expected_type = "int" if dtype == np.int32 else "long"
    assert key_groups_array(keys, 1000).tolist() == scalar_groups(keys, 1000, expected_type)
    assert operator_indexes_array(keys, 1000, 9).tolist() == (
        scalar_indexes(keys, 1000, 9, expected_type))


@pytest.mark.parametrize("dtype", [">i4", ">i8", "<i4", "<i8"])
def test_either_byte_order(dtype):
    keys = random_keys(np.int32, n=300).astype(dtype)
    expected_type = "int" if dtype[-1] == "4" else "long"
    assert key_groups_array(keys, 128).tolist() == scalar_groups(keys, 128, expected_type)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_read_only_input_is_accepted_and_never_written(dtype):
    keys = random_keys(dtype, n=300)
    keys.flags.writeable = False
    before = keys.copy()
    groups = key_groups_array(keys, 128)
    indexes = operator_indexes_array(keys, 128, 4)
    assert np.array_equal(keys, before)
    assert not np.shares_memory(groups, keys) and not np.shares_memory(indexes, keys)
    assert indexes.tolist() == [g * 4 // 128 for g in groups.tolist()]


def test_output_is_a_fresh_array_each_call():
    keys = random_keys(np.int32, n=100)
    before = keys.copy()
    a = operator_indexes_array(keys, 128, 4)
    b = operator_indexes_array(keys, 128, 4)
    assert np.array_equal(keys, before)
    assert a is not b and not np.shares_memory(a, b)
    a[:] = -7
    assert b.min() >= 0


def test_list_of_ints_is_accepted():
    keys = [0, 1, 42]
    expected = key_groups_array(np.asarray(keys), 128).tolist()
    assert key_groups_array(keys, 128).tolist() == expected
    assert key_groups_array(keys, 128, key_type="int").tolist() == [94, 86, 29]


@pytest.mark.parametrize("keys", [
    np.array([1.0, 2.0]),
    np.array([1.5], dtype=np.float32),
    np.array([True, False]),
    np.array([1 + 2j]),
    np.array(["1", "2"]),
    np.array([1, 2], dtype=object),
    np.array([], dtype=np.float64),
    np.array([b"ab"]),
], ids=["float64", "float32", "bool", "complex", "str", "object", "empty-float", "bytes"])
def test_non_integer_arrays_are_type_errors(keys):
    with pytest.raises(TypeError, match="integer"):
        key_groups_array(keys, 128)
    with pytest.raises(TypeError, match="integer"):
        operator_indexes_array(keys, 128, 4)


@pytest.mark.parametrize("keys", [
    np.zeros((3, 2), dtype=np.int32),
    np.zeros((2, 3), dtype=np.int64),
    np.zeros((0, 3), dtype=np.int32),
    np.zeros((1, 1, 1), dtype=np.int64),
    np.array(5, dtype=np.int32),
], ids=["2d-int32", "2d-int64", "2d-empty", "3d", "0d"])
def test_arrays_that_are_not_one_dimensional_are_value_errors(keys):
    with pytest.raises(ValueError, match="one-dimensional"):
        key_groups_array(keys, 128)
    with pytest.raises(ValueError, match="one-dimensional"):
        operator_indexes_array(keys, 128, 4)


@pytest.mark.parametrize("key_type", ["string", "Int", "integer", "", "bogus"])
def test_array_key_type_must_be_int_or_long(key_type):
    keys = np.arange(4, dtype=np.int32)
    with pytest.raises(ValueError, match="key_type"):
        key_groups_array(keys, 128, key_type=key_type)
    with pytest.raises(ValueError, match="key_type"):
        operator_indexes_array(keys, 128, 4, key_type=key_type)


# ------------------------------------------------------------------------------------------------
# Argument validation
# ------------------------------------------------------------------------------------------------

BAD_MAX_PARALLELISM = [0, -1, -128, 32769, 65536, 2**31, INT64_MIN]


@pytest.mark.parametrize("max_parallelism", BAD_MAX_PARALLELISM)
def test_max_parallelism_out_of_range(max_parallelism):
    keys = np.arange(3, dtype=np.int32)
    calls = [
        lambda: assign_to_key_group("a", max_parallelism),
        lambda: assign_to_key_group(7, max_parallelism, key_type="long"),
        lambda: compute_key_group_for_key_hash(7, max_parallelism),
        lambda: assign_key_to_parallel_operator("a", max_parallelism, 1),
        lambda: compute_operator_index_for_key_group(max_parallelism, 1, 0),
        lambda: key_groups_array(keys, max_parallelism),
        lambda: operator_indexes_array(keys, max_parallelism, 1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="max_parallelism") as info:
            call()
        assert str(max_parallelism) in str(info.value)
        assert "32768" in str(info.value)


@pytest.mark.parametrize("max_parallelism", [1, 2, 127, 128, 32767, 32768])
def test_max_parallelism_bounds_are_inclusive(max_parallelism):
    assert 0 <= assign_to_key_group("a", max_parallelism) < max_parallelism
    assert 0 <= compute_key_group_for_key_hash(-5, max_parallelism) < max_parallelism
    assert assign_key_to_parallel_operator("a", max_parallelism, max_parallelism) == (
        assign_to_key_group("a", max_parallelism))
    assert compute_operator_index_for_key_group(
        max_parallelism, max_parallelism, max_parallelism - 1) == max_parallelism - 1
    assert key_groups_array(np.arange(3), max_parallelism).max() < max_parallelism


def test_max_parallelism_one_puts_everything_in_group_zero():
    assert assign_to_key_group("anything", 1) == 0
    assert key_groups_array(random_keys(np.int64), 1).tolist() == [0] * 2005


@pytest.mark.parametrize(("max_parallelism", "parallelism"), [
    (128, 0), (128, -1), (128, 129), (1, 2), (32768, 32769), (128, 2**31), (128, INT64_MIN),
])
def test_parallelism_out_of_range(max_parallelism, parallelism):
    keys = np.arange(3, dtype=np.int32)
    calls = [
        lambda: assign_key_to_parallel_operator("a", max_parallelism, parallelism),
        lambda: assign_key_to_parallel_operator(3, max_parallelism, parallelism, key_type="int"),
        lambda: compute_operator_index_for_key_group(max_parallelism, parallelism, 0),
        lambda: operator_indexes_array(keys, max_parallelism, parallelism),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="parallelism") as info:
            call()
        assert str(parallelism) in str(info.value)


@pytest.mark.parametrize(("max_parallelism", "key_group"), [
    (128, -1), (128, 128), (128, 2**31), (1, 1), (32768, 32768), (32768, -32768),
])
def test_key_group_out_of_range(max_parallelism, key_group):
    with pytest.raises(ValueError, match="key_group") as info:
        compute_operator_index_for_key_group(max_parallelism, 1, key_group)
    assert str(key_group) in str(info.value)


@pytest.mark.parametrize("parallelism", [0, -1, -32768, INT64_MIN])
def test_default_max_parallelism_rejects_non_positive_parallelism(parallelism):
    with pytest.raises(ValueError, match="parallelism"):
        compute_default_max_parallelism(parallelism)


@pytest.mark.parametrize("parallelism", [32769, 65536, 10**6, 2**31 - 1, 7 * 10**18])
def test_default_max_parallelism_rejects_parallelism_above_the_upper_bound(parallelism):
    """Flink's computeDefaultMaxParallelism first checks 0 < parallelism <= 32768
    (checkParallelismPreconditions): a larger operator parallelism is an error, not 32768."""
    with pytest.raises(ValueError, match="parallelism"):
        compute_default_max_parallelism(parallelism)


@settings(max_examples=300, deadline=None)
@given(parallelism=st.integers(1, 32768))
def test_default_max_parallelism_formula(parallelism):
    n = parallelism + parallelism // 2
    power = 1 << (n - 1).bit_length()  # roundUpToPowerOfTwo
    expected = min(max(power, 128), 32768)
    result = compute_default_max_parallelism(parallelism)
    assert result == expected
    assert result & (result - 1) == 0
    assert parallelism <= result  # a valid max parallelism for that parallelism
    assignment = assign_key_to_parallel_operator("k", result, parallelism)
    assert 0 <= assignment < parallelism


@pytest.mark.parametrize("key_type", ["Int", "LONG", "str", "integer", "", "bool", 1])
def test_unknown_key_type(key_type):
    with pytest.raises(ValueError, match="key_type") as info:
        java_hash_code(1, key_type=key_type)
    assert all(name in str(info.value) for name in kg.KEY_TYPES)
    with pytest.raises(ValueError, match="key_type"):
        assign_to_key_group(1, 128, key_type=key_type)
    with pytest.raises(ValueError, match="key_type"):
        assign_key_to_parallel_operator(1, 128, 2, key_type=key_type)


@pytest.mark.parametrize("key", [
    1.0, 2.5, None, ("a", 1), ["a"], {"a": 1}, {1}, decimal.Decimal("3"),
    fractions.Fraction(1, 2), 1j, object(), np.float64(1.0),
], ids=lambda k: type(k).__name__)
def test_unsupported_key_types_are_type_errors_with_a_helpful_message(key):
    with pytest.raises(TypeError) as info:
        java_hash_code(key)
    message = str(info.value)
    assert type(key).__name__ in message
    assert "key_type" in message and "hash_code" in message
    with pytest.raises(TypeError):
        assign_to_key_group(key, 128)
    with pytest.raises(TypeError):
        assign_key_to_parallel_operator(key, 128, 4)


@pytest.mark.parametrize("key", [1, 1.5, b"abc", None, WithHashCode(3)],
                         ids=["int", "float", "bytes", "None", "hash_code"])
def test_key_type_string_needs_a_str(key):
    with pytest.raises(TypeError, match="str"):
        java_hash_code(key, key_type="string")
    with pytest.raises(TypeError):
        assign_to_key_group(key, 128, key_type="string")


@pytest.mark.parametrize("key_type", ["int", "long"])
@pytest.mark.parametrize("key", ["7", b"7", None, [7]], ids=["str", "bytes", "None", "list"])
def test_key_type_int_and_long_need_an_int(key, key_type):
    with pytest.raises(TypeError):
        java_hash_code(key, key_type=key_type)
    with pytest.raises(TypeError):
        assign_to_key_group(key, 128, key_type=key_type)


@pytest.mark.parametrize("key_type", ["int", "long"])
@pytest.mark.parametrize("key", [1.5, 2.0, decimal.Decimal("2.7"), fractions.Fraction(7, 2)],
                         ids=["float", "integral-float", "Decimal", "Fraction"])
def test_key_type_int_and_long_do_not_truncate_non_integers(key, key_type):
    """A float key is not an Integer or a Long: silently hashing int(key) would route 1.5 and 1
    to the same key group, which Flink never does (Double.hashCode differs)."""
    with pytest.raises(TypeError):
        java_hash_code(key, key_type=key_type)
    with pytest.raises(TypeError):
        assign_to_key_group(key, 128, key_type=key_type)


@pytest.mark.parametrize("key", [2**63, -(2**63) - 1, 2**100])
def test_ints_beyond_java_long_are_overflow_errors(key):
    with pytest.raises(OverflowError):
        java_hash_code(key)
    with pytest.raises(OverflowError):
        java_hash_code(key, key_type="long")
    with pytest.raises(OverflowError):
        assign_to_key_group(key, 128)


@pytest.mark.parametrize("key", [INT32_MAX + 1, INT32_MIN - 1, 2**40, INT64_MIN])
def test_key_type_int_rejects_ints_outside_int32(key):
    with pytest.raises(OverflowError):
        java_hash_code(key, key_type="int")
    with pytest.raises(OverflowError):
        assign_to_key_group(key, 128, key_type="int")
    with pytest.raises(OverflowError):
        assign_key_to_parallel_operator(key, 128, 4, key_type="int")


# ------------------------------------------------------------------------------------------------
# key_groups_of / operator_indexes_of: a list of keys routed in one call, as the scalar functions
# ------------------------------------------------------------------------------------------------

class _Coded:
    def __init__(self, code: int):
        self.code = code

    def hash_code(self) -> int:
        return self.code


class _Color(enum.IntEnum):
    RED = 7


class _Name(str):
    pass


any_key = st.one_of(
    st.binary(max_size=40), st.text(max_size=20), int64s, st.integers(INT32_MIN, INT32_MAX),
    st.booleans(), st.binary(max_size=10).map(bytearray), st.binary(max_size=10).map(memoryview),
    int32s.map(_Coded), st.just(_Color.RED), st.text(max_size=5).map(_Name),
    int32s.map(np.int32), int64s.map(np.int64))


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(any_key, max_size=30), max_parallelism=st.integers(1, 32768),
       data=st.data())
def test_key_groups_of_is_the_scalar_function_per_key(keys, max_parallelism, data):
    expected = [assign_to_key_group(k, max_parallelism) for k in keys]
    for container in (list, tuple, iter):
        out = key_groups_of(container(keys), max_parallelism)
        assert out.dtype == np.int32
        assert out.tolist() == expected
    parallelism = data.draw(st.integers(1, max_parallelism))
    assert operator_indexes_of(keys, max_parallelism, parallelism).tolist() == [
        assign_key_to_parallel_operator(k, max_parallelism, parallelism) for k in keys]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), key_type=st.sampled_from(["int", "long", "string", "boolean", "bytes"]))
def test_key_groups_of_with_a_key_type_is_the_scalar_function_per_key(data, key_type):
    strategy = {"int": int32s, "long": int64s, "string": st.text(max_size=20),
                "boolean": st.booleans(), "bytes": st.binary(max_size=40)}[key_type]
    keys = data.draw(st.lists(strategy, max_size=30))
    assert key_groups_of(keys, 128, key_type).tolist() == [
        assign_to_key_group(k, 128, key_type) for k in keys]


@pytest.mark.parametrize("key", [b"", b"abvhitll", "", "\U0001F600", 0, -1, INT32_MAX, INT32_MIN,
                                 INT32_MAX + 1, INT32_MIN - 1, INT64_MAX, INT64_MIN])
def test_key_groups_of_edge_keys(key):
    # Empty keys, a hash of -1 (the C error value), the Integer/Long boundary, surrogate pairs.
    assert key_groups_of([key], 32768).tolist() == [assign_to_key_group(key, 32768)]


# ------------------------------------------------------------------------------------------------
# key_groups_of_slices / operator_indexes_of_slices: the key is record[key_slice], never made for
# bytes and bytearray records; the result is key_groups_of over the sliced keys
# ------------------------------------------------------------------------------------------------

bounds = st.one_of(st.none(), st.integers(-120, 120), st.sampled_from([-(2**70), 2**70]))
slice_records = st.one_of(st.binary(max_size=100), st.binary(max_size=30).map(bytearray),
                          st.binary(max_size=30).map(memoryview), st.text(max_size=20))


@settings(max_examples=300, deadline=None)
@given(records=st.lists(slice_records, max_size=30), start=bounds, stop=bounds,
       step=st.sampled_from([None, 1]), max_parallelism=st.integers(1, 32768), data=st.data())
def test_key_groups_of_slices_is_key_groups_of_the_sliced_keys(records, start, stop, step,
                                                               max_parallelism, data):
    key = slice(start, stop, step)
    expected = key_groups_of([r[key] for r in records], max_parallelism).tolist()
    for container in (list, tuple, iter):
        out = key_groups_of_slices(container(records), key, max_parallelism)
        assert out.dtype == np.int32
        assert out.tolist() == expected
    parallelism = data.draw(st.integers(1, max_parallelism))
    assert operator_indexes_of_slices(records, key, max_parallelism, parallelism).tolist() == \
        operator_indexes_of([r[key] for r in records], max_parallelism, parallelism).tolist()


@settings(max_examples=100, deadline=None)
@given(records=st.lists(st.binary(max_size=40), max_size=20), start=bounds, stop=bounds,
       key_type=st.sampled_from(["bytes", "int", "string"]))
def test_key_groups_of_slices_with_a_key_type_hashes_as_key_groups_of(records, start, stop, key_type):
    # "bytes" hashes in place; any other key type takes the slice and hashes (or rejects) it the
    # way key_groups_of does
    key = slice(start, stop)
    keys = [r[key] for r in records]
    try:
        expected = key_groups_of(keys, 128, key_type).tolist()
    except TypeError:
        with pytest.raises(TypeError):
            key_groups_of_slices(records, key, 128, key_type)
        return
    assert key_groups_of_slices(records, key, 128, key_type).tolist() == expected


@pytest.mark.parametrize(("key", "error"), [
    (slice(0, 8, 2), ValueError), (slice(8, 0, -1), ValueError), (slice(0, 8, 0), ValueError),
    (slice("a", 8), TypeError), (slice(0, 8.0), TypeError)])
def test_key_groups_of_slices_refuses_a_slice_it_cannot_take_in_place(key, error):
    with pytest.raises(error):
        key_groups_of_slices([b"abcdefgh"], key, 128)


def test_key_groups_of_slices_checks_its_arguments_and_the_keys():
    with pytest.raises(TypeError):
        key_groups_of_slices([b"ab"], None, 128)          # type: ignore[arg-type]
    with pytest.raises(ValueError):
        key_groups_of_slices([b"ab"], slice(0, 1), 0)
    with pytest.raises(ValueError):
        key_groups_of_slices([b"ab"], slice(0, 1), 128, "float")   # type: ignore[arg-type]
    with pytest.raises(ValueError):
        operator_indexes_of_slices([b"ab"], slice(0, 1), 128, 129)

    class NoneKey:
        def __getitem__(self, item):
            return None
    with pytest.raises(ValueError, match="null"):
        key_groups_of_slices([b"ok", NoneKey()], slice(0, 1), 128)
    with pytest.raises(TypeError):
        key_groups_of_slices([b"ok", 5], slice(0, 1), 128)       # an int cannot be sliced
    assert key_groups_of_slices([], slice(0, 1), 128).tolist() == []


@pytest.mark.parametrize("key_type", ["int", "long", "string"])
def test_key_groups_of_matches_flink_vectors(key_type):
    entries = [e for e in KEYS if e["type"] == key_type]
    assert entries
    keys = [vector_key(e) for e in entries]
    for max_parallelism in (128, 32768):
        assert key_groups_of(keys, max_parallelism, key_type).tolist() == [
            e[f"key_group_maxp{max_parallelism}"] for e in entries]
        for parallelism in range(1, 9):
            assert operator_indexes_of(keys, max_parallelism, parallelism, key_type).tolist() == [
                e[f"operator_index_maxp{max_parallelism}_p1_to_p8"][parallelism - 1] for e in entries]
    if key_type == "string":   # the default rule gives str keys the String hash
        assert key_groups_of(keys, 128).tolist() == [e["key_group_maxp128"] for e in entries]


def test_key_groups_of_empty_and_fresh_output():
    assert key_groups_of([], 128).shape == (0,)
    a = key_groups_of([b"x"], 128)
    b = key_groups_of([b"x"], 128)
    assert a is not b


@pytest.mark.parametrize("keys", [[b"a", None], [None]])
def test_key_groups_of_rejects_none_keys_as_flink_does(keys):
    with pytest.raises(ValueError, match="must not be null"):
        key_groups_of(keys, 128)


@pytest.mark.parametrize(("keys", "key_type", "error"), [
    ([1.5], None, TypeError), ([b"a", 1.5], None, TypeError), (["a"], "bytes", TypeError),
    ([b"a"], "string", TypeError), ([2**31], "int", OverflowError), ([2**64], None, OverflowError),
    ([2**64], "long", OverflowError), ([True], "int", TypeError), ([1], "boolean", TypeError),
    ([1], "float", ValueError), ([], "float", ValueError),
])
def test_key_groups_of_rejects_what_the_scalar_function_rejects(keys, key_type, error):
    with pytest.raises(error):
        key_groups_of(keys, 128, key_type)


def test_key_groups_of_checks_parallelism_bounds():
    with pytest.raises(ValueError):
        key_groups_of([b"a"], 0)
    with pytest.raises(ValueError):
        key_groups_of([b"a"], 32769)
    with pytest.raises(ValueError):
        operator_indexes_of([b"a"], 128, 129)
    with pytest.raises(ValueError):
        operator_indexes_of([b"a"], 128, 0)


def test_key_groups_of_rejects_non_iterables():
    with pytest.raises(TypeError):
        key_groups_of(5, 128)  # type: ignore[arg-type]
