"""Bulk colorization through Ray Data on a real local Ray cluster and a real (moto) S3 server."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from PIL import Image

from raycolor.config import ColorizeConfig
from raycolor.core import images
from raycolor.core.colorize import full_l
from raycolor.outputs.ledger import read_manifest
from raycolor.pipelines.colorize import colorize

pytestmark = pytest.mark.slow


def make_inputs(root: Path) -> tuple[int, int]:
    """20 images of mixed sizes and modes, 3 of them bad; returns (good, bad)."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(8):
        arr = rng.integers(0, 256, (30 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / ("sub" if i % 2 else "") / f"rgb{i}.JPG")
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (33, 21), dtype=np.uint8), "L").save(root / f"grey{i}.png")
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (17, 40, 4), dtype=np.uint8), "RGBA").save(root / f"rgba{i}.png")
    Image.fromarray(rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)).convert("P").save(root / "pal.png")
    Image.fromarray((rng.integers(0, 65536, (20, 30))).astype(np.uint16)).save(root / "deep.tif")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (root / "page.jpg").write_text("<html>not an image</html>")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return 17, 3


def lightness(data: bytes) -> torch.Tensor:
    return full_l(images.decode_rgb(data))


def test_folder_in_folder_out(ray_local, tiny_ckpt, tmp_path):
    good, bad = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    s = colorize(ColorizeConfig(inputs=(str(tmp_path / "in"),), output=str(out), checkpoint=tiny_ckpt, batch_size=4))
    assert (s.inputs, s.ok, s.error, s.skipped) == (20, good, bad, 0)
    pngs = sorted(out.glob("images/**/*.png"))
    assert len(pngs) == good
    assert (out / "images/sub/rgb1.png").exists()  # relative path kept, extension replaced
    rows = pads.dataset(str(out / "manifest"), format="parquet").to_table().to_pylist()
    assert len(rows) == 20 and len({r["source"] for r in rows}) == 20
    for r in rows:
        assert r["model_id"] == s.model_id
        if r["status"] == "error":
            assert r["output"] is None and r["error"].split(":")[0] in {"truncated", "not_an_image"}
            continue
        src = Path(r["source"]).read_bytes()
        dst = Path(r["output"]).read_bytes()
        assert Image.open(io.BytesIO(dst)).size == (r["width"], r["height"])
        assert (lightness(dst) - lightness(src)).abs().max() <= 1.0  # L kept within one unit
    done = json.loads((out / "_SUCCESS.json").read_text())
    assert (done["inputs"], done["ok"], done["error"], done["skipped"]) == (20, good, bad, 0)
    assert done["model_id"] == s.model_id and done["images_per_s"] > 0
    assert not list(out.rglob("*.tmp*"))  # no temp files left behind

    # the ledger: one part and one stats record per shard, nothing else under manifest/
    parts = sorted(p.stem for p in (out / "manifest").iterdir())
    assert parts == sorted(p.stem for p in (out / "_stats").iterdir()) and len(parts) == s.shards == 1
    assert not (out / "_spool").exists() or not list((out / "_spool").rglob("*.parquet"))
    assert not (out / "_lock.json").exists()

    again = colorize(ColorizeConfig(inputs=(str(tmp_path / "in"),), output=str(out), checkpoint=tiny_ckpt))
    assert (again.skipped, again.processed, again.ok, again.shards_skipped) == (20, 0, good, 1)
    assert read_manifest(str(out)).num_rows == 20


def test_unfinished_shard_is_redone_once_finished_ones_skipped(ray_local, tiny_ckpt, tmp_path):
    good, bad = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    cfg = ColorizeConfig(inputs=(str(tmp_path / "in"),), output=str(out), checkpoint=tiny_ckpt, batch_size=4, shard_size=4)
    first = colorize(cfg)
    assert (first.inputs, first.ok, first.error) == (20, good, bad)
    stats = {p.stem: json.loads(p.read_text()) for p in (out / "_stats").iterdir()}
    assert first.shards == len(stats) >= 5 and all(st["rows"] <= 4 for st in stats.values())
    assert sorted(p.stem for p in (out / "manifest").iterdir()) == sorted(stats)
    assert sum(st["rows"] for st in stats.values()) == 20 and sum(st["ok"] for st in stats.values()) == good

    # a crash after a shard's part was written but before its stats record; a stale spool file of an
    # earlier attempt holding a copy of one of its rows; an image of it deleted
    victim = max(stats, key=lambda k: stats[k]["rows"])
    (out / "_stats" / f"{victim}.json").unlink()
    part = out / "manifest" / f"{victim}.parquet"
    rows = pads.dataset(str(part), format="parquet").to_table()
    (out / "_spool" / victim).mkdir(parents=True)
    (out / "_spool" / victim / "part-stale.parquet").write_bytes(part.read_bytes())
    lost = next(r["output"] for r in rows.to_pylist() if r["status"] == "ok")
    Path(lost).unlink()
    calls = []  # the progress hooks: the total is known before the first rows come back
    again = colorize(cfg, on_total=lambda total, skipped: calls.append(("total", total, skipped)),
                     on_rows=lambda ok, err: calls.append(("rows", ok + err)))
    assert calls[0] == ("total", 20, 20 - rows.num_rows) and [c[0] for c in calls[1:]] == ["rows"] * (len(calls) - 1)
    assert sum(c[1] for c in calls[1:]) == rows.num_rows
    assert (again.processed, again.skipped, again.inputs, again.ok) == (rows.num_rows, 20 - rows.num_rows, 20, good)
    assert again.shards_skipped == first.shards - 1
    assert Path(lost).exists()
    srcs = read_manifest(str(out)).column("source").to_pylist()
    assert len(srcs) == 20 and len(set(srcs)) == 20
    assert not list((out / "_spool").rglob("*.parquet"))


def test_s3_in_and_out_with_tar_and_manifest(ray_local, s3_env, tiny_ckpt, tmp_path):
    fs = s3_env.fs()
    bucket = s3_env.bucket("colorize")
    rng = np.random.default_rng(1)

    def jpeg(h, w):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(b, "JPEG")
        return b.getvalue()

    for i in range(3):
        fs.pipe(f"{bucket}/photos/p{i}.jpg", jpeg(20 + i, 30))
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tf:
        for name, (h, w) in {"a/m0.jpg": (16, 24), "m1.jpg": (40, 12)}.items():
            data = jpeg(h, w)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    fs.pipe(f"{bucket}/shards/shard-000.tar", tar_buf.getvalue())
    fs.pipe(f"{bucket}/loose/x.jpg", jpeg(10, 10))
    fs.pipe(f"{bucket}/lists/list.txt", f"s3://{bucket}/loose/x.jpg\n".encode())

    inputs = (f"s3://{bucket}/photos", f"s3://{bucket}/shards/shard-000.tar", f"s3://{bucket}/lists/list.txt")
    out = f"s3://{bucket}/out"
    s = colorize(ColorizeConfig(inputs=inputs, output=out, checkpoint=tiny_ckpt, format="jpeg", batch_size=2))
    assert (s.inputs, s.ok, s.error) == (6, 6, 0)
    keys = sorted(k.split("/out/images/", 1)[1] for k in fs.find(f"{bucket}/out/images"))
    # the folder keeps plain names; the tar and the manifest, whose keys are made in their own tasks, have their
    # own namespaces (a first run shares "" only among roots listed together); the entry keeps its bucket
    ns = s.settings["namespaces"]
    tar_ns, list_ns = ns[inputs[1]], ns[inputs[2]]
    assert ns[inputs[0]] == "" and tar_ns.startswith("shard-000.tar-") and list_ns.startswith("list.txt-")
    assert keys == sorted(["p0.jpg", "p1.jpg", "p2.jpg", f"{list_ns}/{bucket}/loose/x.jpg",
                           f"{tar_ns}/shard-000.tar/a/m0.jpg", f"{tar_ns}/shard-000.tar/m1.jpg"])
    m1 = Image.open(io.BytesIO(fs.cat(f"{bucket}/out/images/{tar_ns}/shard-000.tar/m1.jpg")))
    assert m1.size == (12, 40)
    table = read_manifest(out)
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    assert f"s3://{bucket}/shards/shard-000.tar#a/m0.jpg" in table.column("source").to_pylist()
    assert json.loads(fs.cat(f"{bucket}/out/_SUCCESS.json"))["ok"] == 6


def test_parquet_images_column_and_names_cannot_escape(ray_local, tiny_ckpt, tmp_path):
    from tests.badimages import make_tar_with_bad_members

    make_tar_with_bad_members(tmp_path / "in" / "evil.tar")
    out = tmp_path / "out"
    s = colorize(
        ColorizeConfig(inputs=(str(tmp_path / "in" / "evil.tar"),), output=str(out), checkpoint=tiny_ckpt, parquet_images=True)
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".png", ".jpg"} and "in" not in p.parts]
    assert written and all(out in p.parents for p in written)
    rows = read_manifest(str(out), columns=None).to_pylist()
    assert len(rows) == s.inputs
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok
    tbl = pads.dataset(str(out / "manifest"), format="parquet").to_table()
    assert "image" in tbl.column_names
    for r in tbl.to_pylist():
        if r["status"] == "ok":
            assert r["image"] == Path(r["output"]).read_bytes()


# A driver SIGKILLed mid-run, then the same command: tests/test_ledger_ray.py (local and S3, both layouts).


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_device_codec_path_matches_the_cpu_path(ray_local, tiny_ckpt, tmp_path, fmt):
    """The nvJPEG path (run here with torchvision's CPU JPEG codec): same rows, upright sizes, same pixels."""
    from tests import badimages

    corpus = badimages.make_corpus(tmp_path / "in")
    keep = {n for n in corpus if n.startswith("orient_") or n in ("cmyk.jpg", "photo with space.jpg", "rgba.png")}
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "in" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # header fine, data cut
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (30, 50), dtype=np.uint8), "L").save(tmp_path / "in" / "grey.jpg")
    for name in set(corpus) - keep:
        (tmp_path / "in" / name).unlink()
    runs = {}
    for device_codec in (True, False):
        out = tmp_path / f"out-{device_codec}"
        s = colorize(ColorizeConfig(inputs=(str(tmp_path / "in"),), output=str(out), checkpoint=tiny_ckpt,
                                    format=fmt, device_codec=device_codec, batch_size=4))
        assert s.settings["device_codec"] is device_codec
        runs[device_codec] = {Path(r["source"]).name: r for r in read_manifest(str(out)).to_pylist()}
    dev, cpu = runs[True], runs[False]
    assert set(dev) == set(cpu) == keep | {"cut.jpg", "grey.jpg"}
    assert dev["cut.jpg"]["status"] == "error" and dev["cut.jpg"]["error"].startswith("truncated")
    for name, row in cpu.items():
        assert dev[name]["status"] == row["status"], name
        if row["status"] != "ok":
            continue
        assert (dev[name]["width"], dev[name]["height"]) == (row["width"], row["height"]), name
        a = images.decode_rgb(Path(dev[name]["output"]).read_bytes()).astype(int)
        b = images.decode_rgb(Path(row["output"]).read_bytes()).astype(int)
        assert a.shape == b.shape == (row["height"], row["width"], 3)
        assert np.abs(a - b).max() <= (8 if fmt == "jpeg" else 1), name  # two JPEG encoders may differ a little
        src = Path(row["source"]).read_bytes()
        assert (lightness(Path(dev[name]["output"]).read_bytes()) - lightness(src)).abs().mean() < (2.0 if fmt == "jpeg" else 0.5)


def test_a_scan_over_the_memory_budget_is_an_error_row_and_the_rest_fit(ray_local, tiny_ckpt, tmp_path):
    """--memory-per-cpu: decode and finish tasks ask Ray for that much memory (the run still schedules and
    finishes), and an image whose working set is over it alone is a "too_large" row that names the budget;
    not a transient error, so --retry-errors does not send it back into memory trouble."""
    from raycolor.core.budget import BYTES_PER_PIXEL

    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(inp / f"small{i}.png")
    Image.fromarray(rng.integers(0, 256, (1500, 2000), dtype=np.uint8), "L").save(inp / "big.png")
    budget = 32 * 2**20  # holds 32 MiB / 40 B = 0.84 MP (depth auto: the 16-bit rate); the big scan is 3 MP
    assert 48 * 64 * BYTES_PER_PIXEL[16] < budget < 1500 * 2000 * BYTES_PER_PIXEL[8]
    cfg = ColorizeConfig(inputs=(str(inp),), output=str(tmp_path / "out"), checkpoint=tiny_ckpt, batch_size=2,
                         memory_per_cpu=budget)
    s = colorize(cfg)
    assert (s.ok, s.error) == (3, 1) and s.settings["memory_per_cpu"] == budget
    rows = {Path(r["source"]).name: r for r in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert rows["big.png"]["error"].startswith("too_large: 2000x1500 = 3000000 pixels exceeds what --memory-per-cpu")
    again = colorize(dataclasses.replace(cfg, retry_errors="transient"))
    assert again.processed == 0
    with pytest.raises(ValueError, match="largest node"):
        colorize(dataclasses.replace(cfg, memory_per_cpu=10**15))


_BUDGET_DRIVER = r"""
import json, sys, time
import ray
from ray.cluster_utils import Cluster
from raycolor.config import ColorizeConfig
from raycolor.pipelines.colorize import colorize

inp, out, ckpt, node_memory, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "memory": node_memory, "include_dashboard": False})
ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
try:
    s = colorize(ColorizeConfig(inputs=(inp,), output=out, checkpoint=ckpt, batch_size=2, memory_per_cpu=budget))
    time.sleep(3)  # workers report task events to the GCS about once a second
    spans = [(e["ts"], e["ts"] + e["dur"], e.get("cat", "") + " " + e["name"]) for e in ray.timeline() if e.get("ph") == "X"]
    print("RESULT " + json.dumps({"ok": s.ok, "error": s.error, "spans": spans}), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_a_queue_of_big_scans_runs_as_many_at_once_as_the_memory_budget_allows(tiny_ckpt, tmp_path):
    """A queue of large images under a small --memory-per-cpu, on a node whose memory holds the budget twice:
    every image is colorized (no out-of-memory kill, no error row), and Ray's own timeline of the run shows at
    most two decode or finish tasks at any moment (the stages' pools would run four on 2 CPUs: two decodes
    and two 0-CPU finish tasks). A node of its own (ray.cluster_utils.Cluster, in a driver subprocess): the
    session's Ray has the machine's memory. Measured: 2 at once with the budget, 4 with the same driver without
    it (memory_per_cpu=None), so the bound is the budget's doing."""
    import subprocess
    import sys

    from tests.drivers import ROOT

    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # 3 MP grey scans: ~72 MB of working set each at 24 B/pixel
        Image.fromarray(rng.integers(0, 256, (1500, 2000), dtype=np.uint8), "L").save(inp / f"scan{i}.png")
    budget, node_memory = 200 * 2**20, 500 * 2**20  # the node holds two budgets, not three
    proc = subprocess.run(
        [sys.executable, "-c", _BUDGET_DRIVER, str(inp), str(tmp_path / "out"), tiny_ckpt, str(node_memory), str(budget)],
        capture_output=True, text=True, timeout=600,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert (result["ok"], result["error"]) == (6, 0)
    heavy = [(a, b) for a, b, name in result["spans"] if "decode_block" in name or "finish_batch" in name]
    assert heavy, sorted({name for _, _, name in result["spans"]})
    edges = sorted([(a, 1) for a, _ in heavy] + [(b, -1) for _, b in heavy])  # an end before a start at a tie
    at_once = max(np.cumsum([d for _, d in edges]))
    assert 1 <= at_once <= node_memory // budget, heavy
