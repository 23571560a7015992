"""The one unit system: decimal sizes, one duration format (backups.units)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backups.units import fmt_bytes, fmt_duration


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_500_000, "1.5 MB"), (402_000_000, "402.0 MB"),
    (2.5e9, "2.5 GB"), (3e12, "3.0 TB"), (7e18, "7000.0 PB"), (-1_500_000, "-1.5 MB"),
    (None, "—"), ("12", "—"), (True, "—"), (math.nan, "—"),
])
def test_sizes_are_decimal(n, text):
    assert fmt_bytes(n) == text


@pytest.mark.parametrize(("s", "text"), [
    (0, "0s"), (4.25, "4.2s"), (9.96, "10s"), (42, "42s"), (59.4, "59s"), (59.6, "1m 00s"), (327, "5m 27s"),
    (3600, "1h 00m"), (11_100, "3h 05m"), (190_000, "2d 4h"), (-90, "-1m 30s"),
    (math.inf, "never"), (None, "—"), ("5", "—"), (False, "—"),
])
def test_one_duration_format(s, text):
    assert fmt_duration(s) == text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_duration_never_fails_and_never_says_minutes_with_a_dot(s):
    text = fmt_duration(s)
    assert text and "." not in text.split()[-1][:-1] or s < 10  # only sub-10 s values carry a decimal
