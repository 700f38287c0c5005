"""Array literals must read back in PostgreSQL as exactly the values they were built from;
the round trip through the real parser is in tests/integration/test_ingest_repository.py."""

from __future__ import annotations

from decimal import Decimal

from shared.db.literals import decimal_array, int_array, text_array


def test_text_elements_are_quoted_and_escaped() -> None:
    assert text_array(["a", 'b"c', "d\\e", "NULL", "{x,y}", None]) == (
        '{"a","b\\"c","d\\\\e","NULL","{x,y}",NULL}'
    )


def test_empty_arrays() -> None:
    assert text_array([]) == int_array([]) == decimal_array([]) == "{}"


def test_numbers() -> None:
    assert int_array([0, -3, 12]) == "{0,-3,12}"
    assert decimal_array([Decimal("12.3400"), None, Decimal("-1")]) == "{12.3400,NULL,-1}"
