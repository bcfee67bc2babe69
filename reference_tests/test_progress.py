"""The progress line (qz/progress.py)."""
import io

from qz.progress import Progress, format_duration


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_line_has_rate_based_eta():
    clock = FakeClock()
    bar = Progress(100, "step", stream=io.StringIO(), enabled=True, clock=clock)
    clock.t = 10.0
    line = bar.line(20, loss=1.5)
    assert "step 20/100" in line and "loss 1.5" in line
    assert "ETA 0:40" in line            # 2 steps/s, 80 to go


def test_resume_counts_only_new_steps():
    clock = FakeClock()
    bar = Progress(100, "step", stream=io.StringIO(), enabled=True, clock=clock, initial=50)
    clock.t = 10.0
    assert "ETA 0:40" in bar.line(60)    # 1 step/s since the resume, 40 to go


def test_quiet_when_not_a_terminal():
    out = io.StringIO()                  # StringIO.isatty() is False
    bar = Progress(10, stream=out)
    bar.update(5, loss=1.0)
    bar.final()
    assert out.getvalue() == ""


def test_redraws_in_place_on_a_terminal():
    out = io.StringIO()
    clock = FakeClock()
    bar = Progress(3, stream=out, enabled=True, clock=clock)
    for i in range(1, 4):
        clock.t += 1.0
        bar.update(i)
    bar.final()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")


def test_format_duration():
    assert format_duration(59) == "0:59"
    assert format_duration(3661) == "1:01:01"
    assert format_duration(float("nan")) == "?"
