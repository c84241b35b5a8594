"""The one progress line: count, bar, rate and the time left, also beyond a day (the
paper's runs are 16-18 hours on its GPU; a CPU run is days)."""

import pytest

from crfgan_tf.utils.progress import Progress, format_duration


@pytest.mark.parametrize("seconds,text", [
    (0, "0:00:00"), (59.4, "0:00:59"), (3600, "1:00:00"), (86399, "23:59:59"),
    (86400, "24:00:00"), (27.4 * 3600, "27:24:00"), (250 * 3600 + 61, "250:01:01")])
def test_duration_counts_hours_past_a_day(seconds, text):
    assert format_duration(seconds) == text


def test_eta_of_a_run_longer_than_a_day_is_not_wrapped():
    """27.4 h left printed as 27:24:00, not strftime's 03:24:00."""
    now = [0.0]
    progress = Progress(total=80_000, log=lambda line: None, what="step", clock=lambda: now[0])
    now[0] = 100.0  # 100 steps in 100 s: 79,900 s left... scaled below
    line = progress.line(100)
    assert "1.00 it/s" in line and "ETA 22:11:40" in line
    now[0] = 100.0 * 1.25  # 0.8 it/s: 99,875 s = 27 h 44 min 35 s
    assert "ETA 27:44:35" in progress.line(100)


def test_eta_unknown_before_the_first_item():
    progress = Progress(total=10, log=lambda line: None, clock=lambda: 5.0)
    assert progress.line(0).endswith("0.00 it/s ETA ?")
