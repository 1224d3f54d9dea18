from wavexport.core.text import fmt_duration


def test_durations_read_as_a_clock_without_leading_zero_units():
    assert fmt_duration(None) == "-"
    assert fmt_duration(0) == "0s"
    assert fmt_duration(59.4) == "59s"
    assert fmt_duration(59.6) == "1m00s"
    assert fmt_duration(187) == "3m07s"
    assert fmt_duration(2 * 3600 + 5 * 60 + 9) == "2h05m09s"
