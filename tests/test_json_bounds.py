"""JSON depth is bounded before decoding: never RecursionError, brackets in strings ignored."""

from __future__ import annotations

import json

import pytest

from mirakl_cancel._serde import JSONDepthError, check_json_depth, loads


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [1, 10, 64])
def test_up_to_the_limit_is_accepted(depth: int) -> None:
    assert loads(nested(depth)) is not None


@pytest.mark.parametrize("depth", [65, 1000, 200_000])
def test_deeper_is_refused_as_a_value_error(depth: int) -> None:
    with pytest.raises(JSONDepthError, match="deeper than 64"):
        loads(nested(depth))
    with pytest.raises(ValueError, match="deeper than 64"):
        loads(nested(depth).encode())


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[[[[\\\"[[[" * 50, "b": "\\", "c": [[["x"]]]})
    check_json_depth(text, 4)
    assert loads(text, max_depth=4)["c"] == [[["x"]]]


def test_an_escaped_backslash_ends_a_string() -> None:
    text = "[" + json.dumps("x\\") + "," + nested(70) + "]"
    with pytest.raises(JSONDepthError):
        check_json_depth(text, 64)


def test_unbalanced_text_is_left_to_the_decoder() -> None:
    with pytest.raises(ValueError, match="too deeply"):
        loads("[" * 100_000)  # not JSON: a ValueError all the same, not RecursionError
    with pytest.raises(json.JSONDecodeError):
        loads("]" * 100 + "[" * 100)


def test_no_limit_when_asked() -> None:
    assert loads(nested(100), max_depth=None) is not None
