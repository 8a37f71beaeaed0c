"""What a person sees: `raycolor colorize` run as a real process, in a real pseudo-terminal and with pipes.

A live progress bar with the total while it runs, a plain periodic line when stderr is not a terminal, and
none of Ray's own log lines unless --verbose.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SAMPLES = str(Path(__file__).resolve().parents[1] / "raycolor" / "samples")
N_SAMPLES = 16
RAYCOLOR = [sys.executable, "-m", "raycolor.cli"]
# Ray's own log-line format ("INFO file.py:123 -- ..."): shown with --verbose, never without
RAY_LOG_LINE = re.compile(r"\b(INFO|WARNING)\b.*\.py:\d+ --")
# what Ray prints when nothing keeps it quiet (seen on a terminal before this was fixed)
RAY_NOISE = re.compile(
    RAY_LOG_LINE.pattern + r"|core_worker\.cc|streaming_executor|Execution plan|"
    r"A new progress UI|tqdm is not installed|Token authentication is enabled|Started a local Ray instance|"
    r"Warning: |warnings\.warn\("  # a Python warning: "path.py:N: UserWarning: ..." then its source line
)
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours: dropped
CURSOR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")  # redraws (cursor moves, line erases): a line break


def _env(ray_address: str | None = None) -> dict[str, str]:
    """A local-mode run, or (ray_address) a job joining the session's Ray: Ray's chatter differs, none may show."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env["COLUMNS"], env["LINES"], env["TERM"] = "120", "40", "xterm-256color"
    return env


def _colorize_args(tiny_ckpt: str, out: Path, *extra: str) -> list[str]:
    return [*RAYCOLOR, "colorize", SAMPLES, "--output", str(out), "--checkpoint", tiny_ckpt, "--batch-size", "2", *extra]


def test_progress_bar_in_a_terminal_and_no_ray_lines(tiny_ckpt, tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        _colorize_args(tiny_ckpt, tmp_path / "out"),
        stdin=follower, stdout=follower, stderr=follower, env=_env(), close_fds=True,
    )
    os.close(follower)
    chunks: list[tuple[float, bytes]] = []
    deadline = time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append((time.time(), data))
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    raw = b"".join(c for _, c in chunks).decode("utf-8", "replace")
    text = CURSOR.sub("\n", SGR.sub("", raw))
    assert proc.returncode == 0, text[-3000:]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[0].startswith("Started a local Ray runtime"), lines[:5]
    # the live bar, with the total, drawn before the run's summary table
    table_at = next(i for i, line in enumerate(lines) if line == "raycolor colorize")
    bar = [line for line in lines[:table_at] if line.startswith("colorize") and f"/{N_SAMPLES}" in line]
    assert bar, lines[:table_at]
    assert any("images/s" in line and "ok" in line and "errors" in line for line in bar), bar
    assert any(f"{N_SAMPLES}/{N_SAMPLES}" in line for line in bar), bar
    # it was drawn while the job ran: several frames, the first well before the last byte
    frames = [t for t, c in chunks if f"/{N_SAMPLES}".encode() in c]
    assert len(frames) >= 2 and frames[0] < chunks[-1][0] - 0.5
    noise = [line for line in lines if RAY_NOISE.search(line)]
    assert not noise, noise


def test_plain_progress_lines_without_a_terminal(ray_address, tiny_ckpt, tmp_path):
    r = subprocess.run(
        _colorize_args(tiny_ckpt, tmp_path / "out", "--progress-every", "1"),
        capture_output=True, text=True, env=_env(ray_address), timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\x1b[" not in r.stderr  # no terminal: no control sequences in a job log
    progress = [line for line in r.stderr.splitlines() if line.startswith("colorize: ")]
    assert len(progress) >= 3, r.stderr  # start, at least one tick, the end
    assert progress[0].startswith(f"colorize: 0/{N_SAMPLES} images")
    assert progress[-1].startswith(f"colorize: {N_SAMPLES}/{N_SAMPLES} images (100.0 %)")
    assert all("images/s, ETA" in line and ", ok " in line and ", errors " in line for line in progress)
    assert f"ok {N_SAMPLES}, errors 0" in progress[-1]
    noise = [line for line in r.stderr.splitlines() if RAY_NOISE.search(line)]
    assert not noise, noise
    assert "raycolor colorize" in r.stdout and "images/s" in r.stdout


@pytest.fixture(scope="module")
def one_image_runs(ray_address, tiny_ckpt, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The same one-image job, quiet and --verbose, each joining the session's Ray (a fresh local Ray each costs
    a 2-core box ~20 s; local mode's own output is the pty test's). Two tests read them."""
    tmp = tmp_path_factory.mktemp("one_image")
    one = tmp / "one"
    one.mkdir()
    (one / "a.jpg").write_bytes((Path(SAMPLES) / "05-kite.jpg").read_bytes())
    runs = {}
    for flag in ("", "--verbose"):
        args = [*RAYCOLOR, "colorize", str(one), "--output", str(tmp / f"out{flag}"), "--checkpoint", tiny_ckpt]
        runs[flag] = subprocess.run(args + ([flag] if flag else []), capture_output=True, text=True,
                                    env=_env(ray_address), timeout=300)
        assert runs[flag].returncode == 0, runs[flag].stderr[-3000:]
    return runs


def test_verbose_shows_rays_own_logs(one_image_runs):
    verbose = one_image_runs["--verbose"].stderr  # the quiet run's side: RAY_NOISE, in the test below
    assert [line for line in verbose.splitlines() if RAY_LOG_LINE.search(line)], verbose[-3000:]


def test_a_one_image_run_shows_no_python_warning_unless_verbose(one_image_runs):
    """On one image Ray Data warns that its finish stage "only received 1 input(s)" (a UserWarning on the
    driver, between the progress lines): Ray's chatter, shown with --verbose only. The warning comes from the
    driver's planning, the same in local mode and in a job joining a cluster."""
    quiet = one_image_runs[""].stderr
    assert "ok 1, errors 0" in quiet
    assert not [line for line in quiet.splitlines() if RAY_NOISE.search(line)], quiet
    assert "UserWarning: The maximum number of concurrent tasks" in one_image_runs["--verbose"].stderr
