"""Chaos on real processes and real (multi-node) Ray clusters: the driver interrupted, a node lost mid-run,
a full disk, a checkpoint that becomes unreadable -- and still exactly one row and one output per input.

Every scenario runs its own Ray in a fresh subprocess (the `raycolor` CLI, or a small driver script that
builds a ``ray.cluster_utils.Cluster``), so nothing here touches the session-scoped ``ray_local`` of the
pytest process. Nothing of Ray or S3 is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from raycolor.ledger import read_manifest
from tests.test_ledger_ray import _img, _one_row_each

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    """The subprocess's environment: this tree first on the path, and a private Ray temp dir. Without it a
    plain ``ray.init()`` joins whatever local cluster /tmp/ray/ray_current_cluster names (another test
    session's), and a ``Cluster`` head would point everyone else's ``ray.init()`` at ours. Short: the
    raylet's socket paths must fit in 107 bytes."""
    import tempfile

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RAY_DEDUP_LOGS": "0", "RAY_TMPDIR": tempfile.mkdtemp(prefix="rc", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    return {**env, **extra}


def _cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raycolor.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=popen.pop("env", None) or _env(), **popen)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for(cond, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the driver ended before {what}: rc {proc.returncode}\n{err.decode()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _finished_rows(out: Path) -> int:
    return sum(json.loads(p.read_text())["rows"] for p in (out / "_stats").glob("*.json"))


def _assert_nothing_partial(out: Path) -> None:
    """Every file under a final name is whole: images decode, manifest parts and stats records parse."""
    import pyarrow.parquet as pq

    for p in out.rglob("*"):
        if not p.is_file() or p.name.startswith(".") or p.name.endswith(".tmp"):
            continue
        if p.suffix == ".png":
            with Image.open(p) as im:
                im.load()
        elif p.suffix == ".parquet":
            pq.read_table(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())


def _assert_exactly_once(out: Path, src: Path, n: int) -> None:
    rows = _one_row_each(out, [str(p) for p in src.iterdir()])
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    assert sorted(p.name for p in (out / "images").iterdir() if not p.name.startswith(".")) == sorted(
        f"{i:03d}.png" for i in range(n))
    assert sorted(r["output"] for r in rows.values()) == sorted(str(out / "images" / f"{i:03d}.png") for i in range(n))


# --------------------------------------------------------------------------------------------
# 1. Ctrl-C / SIGTERM of the driver
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_driver_interrupted_stops_cleanly_and_the_same_command_resumes(tiny_ckpt, tmp_path, sig, code):
    src, out = tmp_path / "in", tmp_path / "out"
    n = 15
    for i in range(n):
        _img(src / f"{i:03d}.png", 200 + i)
    cmd = ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt, "--batch-size", "1", "--shard-size", "3"]
    proc = _cli(*cmd)
    try:
        _wait_for(lambda: any((out / "_stats").glob("*.json")), proc, 240, "the first finished shard")
        # Ctrl-C in a terminal reaches the whole foreground process group; a scheduler's SIGTERM the driver
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
        stopped_s = time.time() - t0
    finally:
        _kill_group(proc)
    err = err.decode()
    assert proc.returncode == code, err[-3000:]
    assert stopped_s < 30, f"took {stopped_s:.1f} s to stop"
    done = _finished_rows(out)
    assert 0 < done < n, "the signal must land mid-run for this test to mean anything"
    hint = [line for line in err.splitlines() if "run the same command to resume" in line]
    assert len(hint) == 1 and hint[0].endswith("raycolor " + " ".join(cmd)), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not (out / "_lock.json").exists(), "the OUTPUT lock must be released"
    _assert_nothing_partial(out)
    assert not list(out.rglob("*.tmp")), sorted(out.rglob("*.tmp"))

    again = _cli(*cmd)
    try:
        stdout, err = again.communicate(timeout=300)
    finally:
        _kill_group(again)
    assert again.returncode == 0, err.decode()[-3000:]
    text = stdout.decode()
    assert f"skipped (done before)  {done}" in text and f"ok                     {n}" in text, text
    _assert_exactly_once(out, src, n)
    assert not (out / "_lock.json").exists()


# --------------------------------------------------------------------------------------------
# 2. Colorize on a 3-node cluster (a 0-CPU head, two 1-CPU workers), a worker node removed mid-run
# --------------------------------------------------------------------------------------------

NODE_LOSS_DRIVER = r'''
import json, os, sys, threading, time, traceback
import ray, s3fs
from ray.cluster_utils import Cluster
from raycolor.config import ColorizeConfig
from raycolor.ray_colorize import colorize

src, out_root, ckpt, victim_kind, layouts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split(",")
fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
ray.init(address=cluster.address)
cluster.wait_for_nodes()

def predictor_nodes():
    return {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if "Predictor" in a["ActorClassName"] and a["State"] == "ALIVE"}

report = []
for layout in layouts:
    out = f"{out_root}-{layout}"
    cfg = ColorizeConfig(inputs=(src,), output=out, checkpoint=ckpt, batch_size=1, shard_size=2, layout=layout)
    result = {}
    def run():
        try:
            result["summary"] = colorize(cfg)
        except BaseException as e:
            result["error"] = "".join(traceback.format_exception(e))[-2000:]
    t = threading.Thread(target=run, daemon=True)
    t.start()
    stats, spool = (out.replace("s3://", "") + d for d in ("/_stats", "/_spool"))
    deadline = time.time() + 300
    # mid-run: the model actor is up and the first images are written (spooled rows), not all shards done
    while time.time() < deadline and t.is_alive() and not (predictor_nodes() and fs.exists(spool) and fs.find(spool)):
        time.sleep(0.1)
    assert t.is_alive(), result
    on = predictor_nodes()
    by_id = {w.node_id: w for w in workers}
    if victim_kind == "actor":
        hit = [by_id[n] for n in on if n in by_id]
    else:
        hit = [w for w in workers if w.node_id not in on]
    if not hit:
        print("RESULT " + json.dumps({"skip": f"no worker node fits {victim_kind!r}: model actor on {on}, head {cluster.head_node.node_id}"}), flush=True)
        os._exit(0)
    victim = hit[0]
    done_at_kill = sum(json.loads(fs.cat_file(p))["rows"] for p in (fs.ls(stats, refresh=True) if fs.exists(stats) else []))
    cluster.remove_node(victim, allow_graceful=False)
    workers.remove(victim)
    t.join(timeout=400)
    assert not t.is_alive(), "colorize hung after the node was removed"
    first = {"error": result.get("error"), "ok": getattr(result.get("summary"), "ok", None)}
    workers.append(cluster.add_node(num_cpus=1))  # the replacement node a cluster autoscaler would bring
    cluster.wait_for_nodes()
    rerun = None
    if "error" in result:
        s = colorize(cfg)
        rerun = {"ok": s.ok, "inputs": s.inputs, "processed": s.processed}
    report.append({"layout": layout, "out": out, "done_at_kill": done_at_kill, "first": first, "rerun": rerun})
print("RESULT " + json.dumps(report))
ray.shutdown()
cluster.shutdown()
'''


def _s3_outputs(fs, out: str, layout: str) -> list[str]:
    """The image outputs under OUTPUT: files in images/, or .png members of the shard tars (as tar#member)."""
    import io
    import tarfile

    bucket_out = out.replace("s3://", "")
    if layout == "files":
        return sorted(f"s3://{k}" for k in fs.find(f"{bucket_out}/images"))
    members = []
    for key in fs.find(f"{bucket_out}/shards"):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(key))) as tf:
            members += [f"s3://{key}#{m}" for m in tf.getnames() if m.endswith(".png")]
    return sorted(members)


@pytest.mark.parametrize("victim", ["cpu-only"])
def test_colorize_node_removed_mid_run_exactly_once(s3_env, tiny_ckpt, tmp_path, victim):
    """OUTPUT on S3 (the realistic multi-node case): both layouts in one cluster, one node removed in each.

    The driver script also knows victim "actor" (remove the node of the model actor), but in CPU mode the
    actor reserves 0 CPUs and Ray places it on the 0-CPU head next to the driver, which remove_node cannot
    take away: that run skipped itself ("no worker node fits 'actor'"), so it is not parametrized here. A
    killed model actor process is covered on one node by
    test_hardening.py::test_killed_model_actor_is_replaced_and_every_input_done_once; with --gpus the actor
    needs a GPU and lives on a worker node, which this CPU-only box cannot show."""
    from tests.test_ledger_ray import _jpeg

    fs = s3_env.fs()
    bucket = s3_env.bucket(f"nodeloss-{victim}")
    n = 12
    for i in range(n):
        fs.pipe_file(f"{bucket}/in/{i:03d}.jpg", _jpeg(300 + i))
    src = f"s3://{bucket}/in"
    proc = subprocess.Popen([sys.executable, "-c", NODE_LOSS_DRIVER, src, f"s3://{bucket}/out", tiny_ckpt, victim,
                             "files,webdataset"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=_env())
    try:
        text = proc.communicate(timeout=900)[0].decode()
    finally:
        _kill_group(proc)
    line = [x for x in text.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, text[-5000:]
    report = json.loads(line[-1][len("RESULT "):])
    if isinstance(report, dict):
        pytest.skip(report["skip"])
    want = [f"{src}/{i:03d}.jpg" for i in range(n)]
    for case in report:
        assert case["done_at_kill"] < n, case  # the node went away mid-run (images spooled, not all shards done)
        assert case["first"]["ok"] == n or case["rerun"]["ok"] == n, case
        table = read_manifest(case["out"]).to_pylist()
        srcs = [r["source"] for r in table]
        assert sorted(srcs) == sorted(want), (case, sorted(srcs))
        assert {r["status"] for r in table} == {"ok"}, case
        outputs = _s3_outputs(fs, case["out"], case["layout"])
        assert outputs == sorted(r["output"] for r in table) and len(outputs) == n, (case, outputs)
        assert not fs.exists(case["out"].replace("s3://", "") + "/_lock.json")


# --------------------------------------------------------------------------------------------
# 4. Disk full on a local OUTPUT (a small tmpfs), then space freed and the same command re-run
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 160 KiB tmpfs mounted at a fresh folder; yields (path, resize(size))."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], check=False, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_local_output_nothing_damaged_and_rerun_finishes(tiny_ckpt, tmp_path, small_tmpfs):
    """A real ENOSPC from the kernel (tmpfs of 160 KiB; 16 noise PNGs of ~12 KiB each do not fit)."""
    out, resize = small_tmpfs
    src = tmp_path / "in"
    n = 16
    for i in range(n):
        _img(src / f"{i:03d}.png", 400 + i, (48, 64))
    cmd = ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt, "--batch-size", "2", "--shard-size", "4",
           "--retries", "1"]
    proc = _cli(*cmd)
    try:
        stdout, err = proc.communicate(timeout=400)
    finally:
        _kill_group(proc)
    stdout, err = stdout.decode(), err.decode()
    if proc.returncode == 0:  # the affected images became error rows naming the write failure
        rows = read_manifest(str(out)).to_pylist()
        bad = [r for r in rows if r["status"] != "ok"]
        assert bad and all("No space left on device" in (r["error"] or "") for r in bad), rows
    else:  # or the job stopped with one clear line, no traceback
        assert proc.returncode == 1, (proc.returncode, err[-3000:])
        assert "No space left on device" in err.strip().splitlines()[-1] and "Traceback" not in err, err[-3000:]
    _assert_nothing_partial(out)
    before = {p: p.read_bytes() for p in (out / "images").rglob("*.png")} if (out / "images").exists() else {}
    assert not (out / "_lock.json").exists()

    resize("16m")  # space freed
    again = _cli(*cmd, "--retry-errors")
    try:
        stdout, err = again.communicate(timeout=400)
    finally:
        _kill_group(again)
    assert again.returncode == 0, err.decode()[-3000:]
    _assert_exactly_once(out, src, n)
    for p, data in before.items():  # what was already written is intact (same bytes: the model is deterministic)
        assert p.read_bytes() == data, p
    assert json.loads((out / "_SUCCESS.json").read_text())["ok"] == n


# --------------------------------------------------------------------------------------------
# 5. The checkpoint on S3 becomes unreadable mid-colorize, then the model actor dies
# --------------------------------------------------------------------------------------------


def test_checkpoint_unreadable_mid_run_restarting_actor_fails_clearly(ray_local, s3_env, tiny_ckpt, tmp_path):
    """All S3 traffic through tests/faultproxy.py; after the first images, every request for the checkpoint's
    keys is reset, and the model actor process is SIGKILLed so that Ray restarts it: its constructor cannot
    load the model. The job must end with an error naming the checkpoint within a bounded time, not hang."""
    import threading
    import traceback

    from raycolor.config import ColorizeConfig, StorageConfig
    from raycolor.ray_colorize import colorize
    from tests.faultproxy import FaultProxy, always
    from tests.test_hardening import _predictor_actors

    fs = s3_env.fs()
    bucket = s3_env.bucket("ckpt-gone")
    fs.put(tiny_ckpt, f"{bucket}/model", recursive=True)
    src = tmp_path / "in"
    n = 14
    for i in range(n):
        _img(src / f"{i:03d}.png", 500 + i)
    out = tmp_path / "out"
    with FaultProxy(s3_env.endpoint) as proxy:
        cfg = ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=f"s3://{bucket}/model", batch_size=1,
                             shard_size=2, storage=StorageConfig(s3_endpoint=proxy.url, retries=1))
        result: dict = {}

        def run() -> None:
            try:
                result["summary"] = colorize(cfg)
            except BaseException as e:  # noqa: BLE001 - asserted below
                result["error"] = e

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.time() + 240
        while time.time() < deadline and thread.is_alive() and not list((out / "_spool").rglob("*.parquet")):
            time.sleep(0.05)
        assert thread.is_alive(), result
        while time.time() < deadline and len(actors := _predictor_actors()) != 1:
            time.sleep(0.05)
        assert len(actors) == 1, actors
        proxy.policy = always("reset", where=lambda m, k: k.startswith(f"/{bucket}/model"))
        os.kill(actors[0]["Pid"], signal.SIGKILL)
        t0 = time.time()
        thread.join(timeout=240)
        took = time.time() - t0
        hung = thread.is_alive()
    assert not hung, "colorize hung after the model actor could not be restarted"
    assert "summary" not in result, "a run whose model cannot be loaded cannot have finished every input"
    text = "".join(traceback.format_exception(result["error"]))
    assert f"cannot read checkpoint s3://{bucket}/model" in text, text[-3000:]
    assert took < 240
    assert not (out / "_lock.json").exists()
    _assert_nothing_partial(out)


# --------------------------------------------------------------------------------------------
# 3. Train on a 3-node cluster, the node of a training worker removed
# --------------------------------------------------------------------------------------------

TRAIN_NODE_LOSS_DRIVER = r'''
import json, os, sys, threading, time, traceback
import ray
from ray.cluster_utils import Cluster
from raycolor.config import StorageConfig
from raycolor.ray_train import fit
from tests.test_train import base_config

data, out = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
ray.init(address=cluster.address)
cluster.wait_for_nodes()
outcome = {}
def run():
    try:
        # one machine's disk is shared by the Cluster's nodes (else the multi-node check refuses a local OUTPUT)
        cfg = base_config(data, out, epochs=3, max_failures=1, storage=StorageConfig(shared_output=True))
        outcome["result"] = fit(cfg, progress=False)
    except BaseException as e:
        outcome["error"] = "".join(traceback.format_exception(e))[-3000:]
t = threading.Thread(target=run, daemon=True)
t.start()
deadline = time.time() + 400
while time.time() < deadline and t.is_alive() and not os.path.exists(os.path.join(out, "metrics.jsonl")):
    time.sleep(0.1)
assert t.is_alive(), outcome
nodes = {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
         if "TrainWorker" in a["ActorClassName"] and a["State"] == "ALIVE"}
victim = next(w for w in workers if w.node_id in nodes)
cluster.remove_node(victim, allow_graceful=False)
cluster.add_node(num_cpus=1)  # the replacement an autoscaler would bring
t.join(timeout=500)
assert not t.is_alive(), "training hung after its node was removed"
print("RESULT " + json.dumps({"error": outcome.get("error"), "epoch": outcome["result"].metrics["epoch"] if "result" in outcome else None}), flush=True)
ray.shutdown()
cluster.shutdown()
'''


def test_train_node_of_a_worker_removed_restores_from_checkpoint(tmp_path):
    from tests.test_train import make_images, read_lines

    data = make_images(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_NODE_LOSS_DRIVER, str(data), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=_env())
    try:
        text = proc.communicate(timeout=900)[0].decode()
    finally:
        _kill_group(proc)
    line = [x for x in text.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, text[-5000:]
    result = json.loads(line[-1][len("RESULT "):])
    assert result["error"] is None and result["epoch"] == 3, result
    lines = read_lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in lines] == [1, 2, 3], lines
    assert any(m["resumed_from"] >= 1 for m in lines[1:]), lines  # the restored group began at a checkpoint
