"""Drivers for the fault tests: a colorize run in a thread, a driver subprocess that joins the session's Ray,
and the moments to strike (mid-run, with the model actor up)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def joining_env(ray_address: str, **extra: str) -> dict[str, str]:
    """os.environ for a subprocess driver that joins the session's Ray (and imports this tree first)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": path, **extra}


def colorize_in_thread(cfg) -> tuple[threading.Thread, dict]:
    """colorize(cfg) running in a daemon thread; the dict gets "summary" or "error" when it ends."""
    from raycolor.pipelines.colorize import colorize

    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = colorize(cfg)
        except BaseException as e:  # noqa: BLE001 - the caller asserts on it
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def predictor_actors() -> list[dict]:
    """ALIVE/RESTARTING Predictor actors, from the GCS (works without the dashboard)."""
    import ray

    return [
        a
        for a in ray._private.state.actors().values()
        if "Predictor" in a["ActorClassName"] and a["State"] in ("ALIVE", "RESTARTING")
    ]


def model_actor_mid_run(thread: threading.Thread, result: dict, started: Callable[[], bool], timeout: float) -> dict:
    """Once `started()` says the run is visibly under way, the one model actor (its GCS record)."""
    deadline = time.time() + timeout
    actors: list[dict] = []
    # both at once: the GCS view can lag a moment behind the actor's first results, and a short run may end
    # in that moment (then the test's run is too short for its machine: fail at once, saying so)
    while not (started() and len(actors := predictor_actors()) == 1):
        assert thread.is_alive(), f"the run ended before the moment to strike: {result}"
        assert time.time() < deadline, [(a["ActorClassName"], a["State"]) for a in actors]
        time.sleep(0.05)
    return actors[0]


def spawn(argv: list[str], env: dict, logs: Path) -> subprocess.Popen:
    """A driver subprocess in its own session, its stdout and stderr going to files under `logs`: a pipe that
    nobody reads while the test polls fills at 64 KiB and stalls the driver (slow runs print more)."""
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("*.out")))
    paths = logs / f"{n}.out", logs / f"{n}.err"
    with open(paths[0], "wb") as out, open(paths[1], "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True, env=env)
    proc.logs = paths  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    """What `proc` (from spawn) has printed so far: (stdout, stderr)."""
    return tuple(p.read_text(errors="replace") for p in proc.logs)  # type: ignore[attr-defined,return-value]


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait for `proc` (from spawn) to end, then kill what is left of its process group; (stdout, stderr)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    return output(proc)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 600) -> None:
    """SIGKILL the driver `proc` (from spawn) and its process group as soon as `ready()`; fail, showing what it
    printed, if it ends or the timeout passes first."""
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"the driver ended (rc {proc.returncode}):\n" + _tail(proc)
            assert time.time() < deadline, "timed out waiting for the moment to kill the driver:\n" + _tail(proc)
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_group(proc)


def _tail(proc: subprocess.Popen) -> str:
    out, err = output(proc)
    return (out + err)[-3000:]
