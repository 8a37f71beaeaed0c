"""Chaos on real multi-node Ray clusters: a node lost mid-run (colorize and training), a local OUTPUT on a
multi-node cluster -- and still exactly one row and one output per input.

One script builds a single ``ray.cluster_utils.Cluster`` for every multi-node scenario and runs them in a
real subprocess. Nothing of Ray or S3 is mocked. The one-machine faults (interrupt, disk full, unreadable
checkpoint) are in test_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest
from support import subprocess_env

from raycolor.outputs.ledger import read_manifest
from tests.drivers import kill_group

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------
# 2. One 3-node cluster (a 0-CPU head, two 1-CPU workers) for every multi-node scenario
# --------------------------------------------------------------------------------------------

# One subprocess builds the Cluster once and runs each scenario in turn, printing "RESULT <name> <json>" as
# each ends; the tests below assert on their own scenario's record. Starting three raylets costs a 2-core
# CI box about a minute, so the scenarios share them (each removed node is replaced, as an autoscaler would).
CLUSTER_DRIVER = r'''
import dataclasses, json, os, sys, threading, time, traceback
import ray, s3fs
from ray.cluster_utils import Cluster
from typer.testing import CliRunner
from raycolor.cli import app
from raycolor.config import ColorizeConfig, StorageConfig
from raycolor.pipelines.colorize import colorize
from raycolor.pipelines.training.driver import fit
from tests.support import base_config

src, s3_out, ckpt, cls_ckpt, tmp, data = sys.argv[1:7]
only = sys.argv[7].split(",") if len(sys.argv) > 7 else None  # a subset of the scenarios, when debugging one
fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
# a removed node is declared dead after health_check_failure_threshold failed checks, health_check_period_ms
# apart (Ray's defaults: 5 x 3 s); a killed raylet fails each check at once, so 1 s apart finds it in ~5 s
t0 = time.time()
fast_detection = {"health_check_period_ms": 1000, "health_check_timeout_ms": 5000, "health_check_failure_threshold": 5}
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                        "_system_config": fast_detection})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
ray.init(address=cluster.address)
cluster.wait_for_nodes()

def emit(name, record):
    global t0
    record["seconds"] = round(time.time() - t0, 1)  # this scenario's wall time, for whoever tunes the suite
    t0 = time.time()
    print(f"RESULT {name} " + json.dumps(record), flush=True)

emit("cluster-up", {})

def alive(cls):
    return {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if cls in a["ActorClassName"] and a["State"] == "ALIVE"}

def in_thread(fn):
    out = {}
    def run():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = "".join(traceback.format_exception(e))[-3000:]
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out

def remove(victim):
    cluster.remove_node(victim, allow_graceful=False)
    workers.remove(victim)
    workers.append(cluster.add_node(num_cpus=1))  # the replacement node an autoscaler would bring

def wanted(name):
    return only is None or name in only

# (a) a local OUTPUT is refused on a multi-node cluster before anything is written, unless declared shared
runner = CliRunner()
if wanted("refusal"):
    runs = {
        "colorize": runner.invoke(app, ["colorize", f"{data}/img00.png", "--output", f"{tmp}/o", "--checkpoint", ckpt]),
        "train": runner.invoke(app, ["train", "--data", data, "--output", f"{tmp}/run", "--weights", "none"]),
        "shared": runner.invoke(app, ["colorize", f"{data}/img00.png", "--output", f"{tmp}/shared", "--checkpoint", ckpt,
                                      "--shared-output"]),
    }
    emit("refusal", {k: [r.exit_code, r.output] for k, r in runs.items()})

# (b) colorize, S3 OUTPUT, a worker node removed mid-run: one running only CPU tasks, then the node of the
# model actor (on a multi-node cluster a CPU-mode actor reserves a CPU, so it runs on a worker node); the
# actor's scenario runs a classification checkpoint, so both heads colorize on a multi-node cluster
# (each layout once: ~80 s a scenario on a 2-core box, and the layouts share every step a node loss affects
# but the final write, which the SIGKILL tests in test_ledger_ray.py cover for both)
for victim_kind, layout in (("cpu-only", "files"), ("actor", "webdataset")):
    name = f"colorize-{victim_kind}-{layout}"
    if not wanted(name):
        continue
    out = f"{s3_out}-{victim_kind}-{layout}"
    cfg = ColorizeConfig(inputs=(src,), output=out, checkpoint=cls_ckpt if victim_kind == "actor" else ckpt,
                         batch_size=1, shard_size=2, layout=layout)
    t, result = in_thread(lambda: colorize(cfg))
    stats, spool = (out.replace("s3://", "") + d for d in ("/_stats", "/_spool"))
    deadline = time.time() + 300

    def some_written():
        # rows spooled (a shard under way) or a shard finished: a shard's spool lives only from its first
        # finished batch to its merge, which an idle machine runs within one poll, so the spool alone can miss
        # every shard of the run; a finished shard's stats record stays
        return any(fs.exists(d) and fs.find(d) for d in (spool, stats))

    # mid-run: the first images are written, not all shards done (checked below), with the model actor up. On
    # a loaded box the tiny model can predict all 12 images before the first write lands, and Ray Data ends the
    # actor (polls seen: actor up until 6.5 s, the first write at 6.7 s); then the strike is at the first write
    # and "the actor's node" is the node it ran on, still running finish/write tasks (actor_up_at_kill says which)
    polls = []  # (seconds into the run, actor seen, written seen, seconds the poll took): says why a miss missed
    last_on = set()
    while time.time() < deadline and t.is_alive():
        p0 = time.time()
        on = alive("Predictor")
        last_on = on or last_on
        written = some_written()
        polls.append((round(p0 - deadline + 300, 1), bool(on), written, round(time.time() - p0, 2)))
        if written and last_on:
            break
        time.sleep(0.1)
    on = alive("Predictor")
    hit = [w for w in workers if (w.node_id in (on or last_on)) == (victim_kind == "actor")]
    if not t.is_alive() or not hit:
        emit(name, {"setup": f"not mid-run or no worker fits: running {t.is_alive()}, {result}, actor on {on or last_on}, "
                             f"head {cluster.head_node.node_id}, {len(polls)} polls, the last 20: {polls[-20:]}"})
        t.join()
        continue
    done_at_kill = sum(json.loads(fs.cat_file(p))["rows"] for p in (fs.ls(stats, refresh=True) if fs.exists(stats) else []))
    remove(hit[0])
    t.join(timeout=400)
    record = {"layout": layout, "out": out, "done_at_kill": done_at_kill, "hung": t.is_alive(), "actor_up_at_kill": bool(on),
              "first": {"error": result.get("error"), "ok": getattr(result.get("value"), "ok", None)}, "rerun": None}
    if not t.is_alive() and "error" in result:
        s = colorize(cfg)
        record["rerun"] = {"ok": s.ok, "inputs": s.inputs, "processed": s.processed}
    emit(name, record)
    if t.is_alive():
        os._exit(1)

# (c) training as production runs it (an S3 prefix and a tar shard in, checkpoints and model on S3), the node
# of a training worker removed after epoch 2's checkpoint: epochs 1-2 switch stages within one attempt (DDP
# re-wrapped), then the restored group resumes from a checkpoint. It trains the classification head: its prior
# pass (a Ray Data pass over the training data) runs on the cluster and is cached on S3 for the restored group
if wanted("train"):
    bucket = src.split("/")[2]
    cfg = base_config(data, f"s3://{bucket}/train-run", epochs=4, max_failures=1, head="classification")
    cfg = dataclasses.replace(cfg, data=(f"s3://{bucket}/train-data", f"s3://{bucket}/train-more.tar"))
    t, outcome = in_thread(lambda: fit(cfg, progress=False))

    def epochs_done():
        try:
            return len(fs.cat_file(f"{bucket}/train-run/metrics.jsonl").splitlines())
        except FileNotFoundError:
            return 0

    deadline = time.time() + 400
    while time.time() < deadline and t.is_alive() and epochs_done() < 2:
        time.sleep(0.2)
    on = alive("TrainWorker")
    hit = [w for w in workers if w.node_id in on]
    if t.is_alive() and hit:
        remove(hit[0])
    t.join(timeout=500)
    emit("train", {"removed": bool(hit), "hung": t.is_alive(), "error": outcome.get("error"), "out": cfg.output,
                   "inputs": list(cfg.data), "epoch": outcome["value"].metrics["epoch"] if "value" in outcome else None,
                   "model": outcome["value"].model_uri if "value" in outcome else None})
ray.shutdown()
cluster.shutdown()
'''


@pytest.fixture(scope="module")
def cluster_runs(s3_server, tiny_ckpt, tiny_classification_ckpt, tmp_path_factory) -> dict:
    """Run CLUSTER_DRIVER once: {scenario: record} plus "_env" (the S3 bucket's names) for the tests."""
    import s3fs
    from support import hold_out_has_a_readable_image, jpeg_bytes, make_images

    tmp = tmp_path_factory.mktemp("cluster")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    data = make_images(tmp / "data")
    # training's inputs on S3: half the images (and broken.png) under a prefix, the other half in a tar
    with tarfile.open(tmp / "more.tar", "w") as tf:
        for i in range(12, 24):
            tf.add(data / f"img{i:02d}.png", arcname=f"img{i:02d}.png")
    for k in range(100):  # the hold-out hashes the sources' URIs: a bucket name that leaves broken.png alone in it is
        bucket = f"nodeloss-{os.getpid()}-{int(time.time())}-{k}"  # passed over (tests/support.py says why)
        fs.mkdir(bucket)
        for p in sorted(data.iterdir()):
            if p.name == "broken.png" or int(p.stem[3:]) < 12:
                fs.put_file(str(p), f"{bucket}/train-data/{p.name}")
        fs.put_file(str(tmp / "more.tar"), f"{bucket}/train-more.tar")
        if hold_out_has_a_readable_image([f"s3://{bucket}/train-data", f"s3://{bucket}/train-more.tar"]):
            break
    else:
        raise AssertionError("no bucket name gives a hold-out with a readable image")
    for i in range(N_NODE_LOSS):
        fs.pipe_file(f"{bucket}/in/{i:03d}.jpg", jpeg_bytes(300 + i))
    src = f"s3://{bucket}/in"
    only = [os.environ["CHAOS_ONLY"]] if os.environ.get("CHAOS_ONLY") else []  # e.g. CHAOS_ONLY=train when debugging
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER_DRIVER, src, f"s3://{bucket}/out", tiny_ckpt, tiny_classification_ckpt, str(tmp),
                             str(data), *only],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=subprocess_env())
    try:
        text = proc.communicate(timeout=1500)[0].decode()
    finally:
        kill_group(proc)
    runs = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            name, record = line[len("RESULT "):].split(" ", 1)
            runs[name] = json.loads(record)
    print("cluster scenarios, seconds:", {k: r.get("seconds") for k, r in runs.items()},
          "model actor up at the strike:", {k: r["actor_up_at_kill"] for k, r in runs.items() if "actor_up_at_kill" in r})
    runs["_text"] = text[-6000:]
    runs["_rc"] = proc.returncode
    runs["_env"] = {"src": src, "tmp": tmp, "fs": fs}
    return runs


def _run_of(runs: dict, name: str) -> dict:
    assert name in runs, f"scenario {name} did not report (driver rc {runs['_rc']}):\n{runs['_text']}"
    return runs[name]


N_NODE_LOSS = 12


@pytest.mark.timeout(1800)  # the first test of the module waits for the whole cluster run
def test_local_output_on_a_multi_node_cluster_is_refused(cluster_runs):
    result = _run_of(cluster_runs, "refusal")
    tmp = cluster_runs["_env"]["tmp"]
    for command in ("colorize", "train"):
        code, output = result[command]
        assert code == 2, output
        line = [x for x in output.splitlines() if x.startswith("error: ")]
        assert len(line) == 1 and "3 nodes" in line[0] and "--shared-output" in line[0] and "s3://" in line[0], output
    assert not (tmp / "o").exists() and not (tmp / "run").exists()  # refused before writing anything
    code, output = result["shared"]
    assert code == 0, output  # the same machine's disk is shared by these three nodes
    assert (tmp / "shared" / "images" / "img00.png").exists()


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


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("scenario", ["cpu-only-files", "actor-webdataset"])
def test_colorize_node_removed_mid_run_exactly_once(cluster_runs, scenario):
    """OUTPUT on S3 (the realistic multi-node case). "actor": the node running the model actor is removed (Ray
    Data restarts the actor on another node, when it still has images to predict: on a loaded box it may have
    finished them before the first write, and then its node goes while running finish/write tasks, the record's
    actor_up_at_kill); "cpu-only": a node running only decode/write tasks."""
    case = _run_of(cluster_runs, f"colorize-{scenario}")
    assert "setup" not in case, case["setup"]
    env = cluster_runs["_env"]
    fs, src = env["fs"], env["src"]
    want = [f"{src}/{i:03d}.jpg" for i in range(N_NODE_LOSS)]
    assert not case["hung"], "colorize hung after the node was removed"
    assert case["done_at_kill"] < N_NODE_LOSS, case  # the node went away mid-run (images spooled, not all shards done)
    assert case["first"]["ok"] == N_NODE_LOSS or case["rerun"]["ok"] == N_NODE_LOSS, case
    table = read_manifest(case["out"]).to_pylist()
    srcs = [r["source"] for r in table]
    assert sorted(srcs) == sorted(want), (case, sorted(srcs))
    assert {r["status"] for r in table} == {"ok"}, case
    outputs = _s3_outputs(fs, case["out"], case["layout"])
    assert outputs == sorted(r["output"] for r in table) and len(outputs) == N_NODE_LOSS, (case, outputs)
    assert not fs.exists(case["out"].replace("s3://", "") + "/_lock.json")


@pytest.mark.timeout(1800)
def test_train_node_of_a_worker_removed_restores_from_checkpoint(cluster_runs):
    """Ray Train's FailureConfig restores the worker group from the last checkpoint on the remaining nodes; the
    run's inputs (an S3 prefix and a tar) are read like colorize's and everything it writes lands on S3."""
    import io

    import torch
    from support import assert_finite_lines

    from raycolor.core import checkpoint
    from raycolor.inputs import list_items
    from raycolor.pipelines.training.split import split_items

    result = _run_of(cluster_runs, "train")
    assert result["removed"], "no training worker ran on a removable node"
    assert not result["hung"], "training hung after its node was removed"
    assert result["error"] is None, result["error"]  # in full: the cause is in the middle of Ray's traceback
    assert result["epoch"] == 4, result
    fs, out = cluster_runs["_env"]["fs"], result["out"][len("s3://"):]
    lines = [json.loads(x) for x in fs.cat_file(f"{out}/metrics.jsonl").decode().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4], lines
    assert [m["stage"] for m in lines] == ["frozen", "finetune", "finetune", "finetune"]
    # epochs 1-2 in the first attempt (the stage switch re-wraps DDP mid-run); the restored group began at a
    # checkpoint
    assert lines[0]["resumed_from"] == 0 and lines[1]["resumed_from"] == 0, lines
    assert any(m["resumed_from"] >= 2 for m in lines[2:]), lines
    assert_finite_lines(lines)
    # the hold-out is split_items' over every input's images (broken.png dropped when decoded; the equal
    # split between the 2 workers may leave one training image out)
    train, val = (sum(not i.source.endswith("broken.png") for i in side) for side in split_items(list_items(result["inputs"]), 0.15))
    assert train + val == 24 and all(m["val_images"] == val for m in lines), (lines, val)
    assert all(m["train_images"] in (train, train - train % 2) for m in lines), (lines, train)
    # on S3: the last num_to_keep=2 checkpoints, each complete (Ray Train may also keep the one the restored
    # group started from), the exported model and the metrics
    keys = set(fs.find(out))
    names = {k.split("/")[3] for k in keys if k.split("/")[2] == "train" and k.split("/")[3].startswith("checkpoint_e")}
    assert [n[: len("checkpoint_e000000")] for n in sorted(names)][-2:] == ["checkpoint_e000003", "checkpoint_e000004"], names
    for name in names:
        assert {f"{out}/train/{name}/{f}" for f in ("config.json", "weights.pt", "train_state.pt")} <= keys
    assert {f"{out}/model/config.json", f"{out}/model/weights.pt", f"{out}/metrics.jsonl", f"{out}/prior.json"} <= keys
    model, meta = checkpoint.load(result["model"])
    assert meta.extra["epoch"] == 4
    # the classification head's prior: one pass on the cluster, cached on S3, carried by the exported model
    prior = json.loads(fs.cat_file(f"{out}/prior.json"))
    assert (meta.head, meta.n_bins) == ("classification", len(prior["bins"])) and sum(prior["counts"]) > 0
    assert torch.equal(model.prior_weights, torch.tensor(prior["weights"]))
    # the optimizer's state came back with the checkpoint: the decoder stepped in every epoch, the top encoder
    # block only in the fine-tuning ones
    state = torch.load(io.BytesIO(fs.cat_file(f"{out}/train/{max(names)}/train_state.pt")), map_location="cpu", weights_only=True)
    groups, opt_state = state["optimizer"]["param_groups"], state["optimizer"]["state"]
    assert float(opt_state[groups[0]["params"][0]]["step"]) == sum(m["steps"] for m in lines)
    assert float(opt_state[groups[1]["params"][-1]]["step"]) == sum(m["steps"] for m in lines[1:])
