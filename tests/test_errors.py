"""The one list formatter: every message that names a list shortens it the same way."""

from pgnet.errors import format_list


def test_a_list_within_the_limit_is_joined_whole():
    assert format_list(["a", "b", "c"], 3) == "a, b, c"
    assert format_list([]) == ""
    assert format_list(iter(["x"])) == "x"


def test_a_longer_list_counts_what_it_leaves_out():
    assert format_list(range(13), 3) == "0, 1, 2, ... (10 more)"
    names = [f"k{i}" for i in range(11)]
    assert format_list(names) == ", ".join(names[:10]) + ", ... (1 more)"  # ten by default


def test_the_separator_joins_items_and_the_count():
    assert format_list(["a (1, 2)", "b", "c"], 2, separator="; ") == "a (1, 2); b; ... (1 more)"
    assert format_list(["m1", "m2", "m3"], 2, separator="\n  ") == "m1\n  m2\n  ... (1 more)"
