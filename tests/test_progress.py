"""The progress report without Ray: what the plain line says, when it is printed, and the training report."""

from __future__ import annotations

import io
import time

from raycolor.pipelines.progress import Progress, TrainProgress, fmt_duration


def test_plain_lines_count_rate_eta_and_outcomes():
    out = io.StringIO()
    p = Progress("colorize", stream=out, live=False, every_s=3600)
    p.start(100, skipped=10)
    p.update(ok=5, error=1)
    p.update(ok=4)
    assert p.done == 20 and p.ok == 9 and p.error == 1
    line = p.line()
    assert line.startswith("colorize: 20/100 images (20.0 %), ")
    assert "images/s, ETA " in line and line.endswith("ok 9, errors 1, 10 done before")
    p.close()
    p.close()  # a second close says nothing more
    lines = out.getvalue().splitlines()
    assert lines == ["colorize: 10/100 images (10.0 %), 0.0 images/s, ETA n/a, ok 0, errors 0, 10 done before", lines[1]]
    assert lines[1].startswith("colorize: 20/100 images")


def test_a_line_every_period_even_while_nothing_finishes():
    out = io.StringIO()
    with Progress("evaluate", stream=out, live=False, every_s=0.2) as p:
        p.start(3)
        time.sleep(0.75)
    lines = out.getvalue().splitlines()
    assert 4 <= len(lines) <= 6, lines  # first, ~3 ticks, last
    assert all(line.startswith("evaluate: 0/3 images") for line in lines)


def test_eta_from_this_runs_rate():
    p = Progress("colorize", stream=io.StringIO(), live=False)
    p.start(1000, skipped=500)
    p._t0 -= 10  # ten seconds in
    p.update(ok=100)  # 10 images/s, 400 to go
    assert abs(p.eta_s() - 40) < 1
    assert fmt_duration(40) == "40s" and fmt_duration(125) == "2m 05s" and fmt_duration(3700) == "1h 01m"
    assert fmt_duration(None) == "n/a"


def test_live_bar_on_a_terminal_draws_the_total():
    out = io.StringIO()
    p = Progress("colorize", stream=out, live=True)
    p.start(7)
    p.update(ok=7)
    p.close()
    assert "7/7" in out.getvalue()


def test_train_report_prints_epoch_lines_and_draws_steps_only_live():
    plain, live = io.StringIO(), io.StringIO()
    for stream, is_live in ((plain, False), (live, True)):
        report = TrainProgress(stream=stream, steps_per_epoch=4, live=is_live)
        report.handle(("step", 1, 2, 3))
        report.handle(("epoch", "epoch 1/2 [frozen] train_loss 0.1"))
        report.close()
    assert plain.getvalue() == "epoch 1/2 [frozen] train_loss 0.1\n"
    assert "epoch 1/2 [frozen] train_loss 0.1" in live.getvalue() and "3/4" in live.getvalue()
