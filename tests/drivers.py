"""Drivers for the fault tests: a colorize run in a thread, a driver subprocess that joins the session's Ray,
and the moments to strike (mid-run, with the model actor up)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def joining_env(ray_address: str, **extra: str) -> dict[str, str]:
    """os.environ for a subprocess driver that joins the session's Ray (and imports this tree first)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": path, **extra}


def colorize_in_thread(cfg) -> tuple[threading.Thread, dict]:
    """colorize(cfg) running in a daemon thread; the dict gets "summary" or "error" when it ends."""
    from raycolor.ray_colorize import colorize

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
    while time.time() < deadline and thread.is_alive() and not started():
        time.sleep(0.05)
    assert thread.is_alive(), result
    while time.time() < deadline and len(actors := predictor_actors()) != 1:
        time.sleep(0.05)  # the GCS view can lag a moment behind the actor's first results
    assert len(actors) == 1, [(a["ActorClassName"], a["State"]) for a in actors]
    return actors[0]


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL the driver `proc` (and its process group) as soon as `ready()`; fail if it ends first."""
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.stdout else proc.returncode
            assert time.time() < deadline, "timed out waiting for the moment to kill the driver"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
