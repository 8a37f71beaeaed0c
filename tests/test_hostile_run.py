"""The hostile-file corpus (tests/hostile.py) mixed with good photos, colorized as a user runs it: one odd file never
stops, stalls or corrupts a run, and two inputs never share an output.

Two tests:
- Ray-free, per file: each corpus file alone through the stages by hand (decode -> model -> compose + encode +
  write), each stage timed. A stage is bounded at STAGE_S seconds on any file: the slowest stage on a good
  48x32 picture takes milliseconds, and the quadratic cases took seconds to minutes before they were fixed,
  so the bound separates the two by orders of magnitude on any machine this suite runs on.
- Ray: `raycolor colorize` (the CLI, in this process, on the session's local Ray) over a folder of the corpus
  and the sample photos, a glob of two same-named tars (collision) and a manifest of presigned and
  credential-bearing URLs (credential), with --memory-per-cpu. Exit 0; one row per input; every good photo
  written; every output decodes again with Pillow and with raycolor; two tars' members, two outputs; no secret
  in any row; and no Ray worker's peak RSS above the budget (the peaks are reset before the run, see
  _reset_peaks).
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image
from support import one_row_each, write_tar
from test_stages import _batch

import hostile
from raycolor.config import ColorizeConfig, StorageConfig
from raycolor.core import checkpoint, images
from raycolor.outputs import ledger
from raycolor.pipelines import stages

SAMPLES = Path(__file__).parent.parent / "raycolor" / "samples"
STAGE_S = 5.0  # most seconds any stage may spend on one corpus file (see the module docstring)
SECRET = "Zq7-presigned-signature-0c0ffee"
BUDGET = 1 << 30  # --memory-per-cpu of the Ray run
# A Ray worker that imported torch and ran the tiny model holds ~0.5-0.8 GB before any image; the budget is what
# one decode or finish task may hold on top. A bomb that escaped its bound inflates to gigabytes (hostile.py).
PEAK_LIMIT = BUDGET + (1 << 30)


def _decodes(data: bytes) -> None:
    """An output decodes again, with Pillow and with raycolor's own decoder."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
    images.decode(data)


def test_every_corpus_file_goes_through_every_stage_in_bounded_time(tmp_path, tiny_ckpt):
    model, meta = checkpoint.load(tiny_ckpt)
    import torch

    folder = tmp_path / "in"
    folder.mkdir()
    corpus = hostile.corpus()
    for name, (data, _) in corpus.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    config = ColorizeConfig(inputs=(str(folder),), output=str(out), checkpoint=tiny_ckpt, batch_size=1,
                            storage=StorageConfig(retries=1))
    stage = stages.ModelStage.for_colorize(config, meta.render_size)
    predictor = stages.Predictor.with_model(model, torch.device("cpu"), stage)
    slow = []
    for name in corpus:
        row = {"source": str(folder / name), "relpath": name, "uri": str(folder / name), "offset": 0, "size": 0,
               "shard": "s", "shard_n": 1, "error": ""}
        times = {}
        t = time.perf_counter()
        decoded = stages.decode_batch(_batch([row]), stage=stage)
        times["decode"], t = time.perf_counter() - t, time.perf_counter()
        predicted = predictor(decoded)
        times["model"], t = time.perf_counter() - t, time.perf_counter()
        done = stages.finish_batch(predicted, config=config, stage=stage, output=str(out), model_id=meta.model_id)
        times["finish"] = time.perf_counter() - t
        slow += [(name, k, round(s, 2)) for k, s in times.items() if s > STAGE_S]
        assert list(done["source"]) == [row["source"]], name
    assert not slow, slow
    for p in (out / "images").rglob("*"):
        if p.is_file():
            _decodes(p.read_bytes())


def zeros_deflate(n: int) -> bytes:
    """A zlib stream of ``n`` zero bytes, made in milliseconds whatever ``n``: one 1 MiB block of zeros, closed by a
    full flush (so it refers to nothing before it), repeated; the Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = 1 << 20
    block = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(n, mib)
    tail = c.compress(bytes(rest)) + c.flush()
    return b"\x78\xda" + block * whole + tail + struct.pack(">I", ((n % 65521) << 16) | 1)


def _worker_pids() -> list[int]:
    """This process's Ray workers: descendants of this process (the session's local Ray was started here) whose
    title Ray set to ray::<task> (ray::IDLE, ray::MapBatches(...)), its own agents left out."""
    parent, title = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                title[int(d.name)] = (d / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
    me = os.getpid()

    def mine(pid: int) -> bool:
        for _ in range(16):
            pid = parent.get(pid, 0)
            if pid == me:
                return True
            if pid <= 1:
                return False
        return False

    return [p for p, t in title.items() if t.startswith(b"ray::") and b"Agent" not in t.split(b"\0")[0] and mine(p)]


def _reset_peaks() -> None:
    """Reset every Ray worker's peak RSS (VmHWM; Linux: writing 5 to /proc/PID/clear_refs), so that what earlier
    tests of the session did in a reused worker does not count; workers started later begin at zero."""
    for pid in _worker_pids():
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


class _Peaks:
    """Every Ray worker's peak RSS, sampled every 0.1 s while the run goes (VmHWM only grows, so a sample before
    a worker exits holds its peak up to then; Ray reaps idle workers, so reading only at the end would miss them)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for pid in _worker_pids():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak[pid] = max(self.peak.get(pid, 0), int(line.split()[1]) * 1024)
                except OSError:
                    pass

    def __enter__(self) -> _Peaks:
        _reset_peaks()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/PID/clear_refs")
@pytest.mark.timeout(240)  # ~15-25 s on 2 cores; a file that stalls a stage for minutes fails here
def test_the_corpus_with_good_photos_through_the_cli(ray_local, tiny_ckpt, tmp_path):
    from typer.testing import CliRunner

    from raycolor.cli import app

    folder = tmp_path / "archive"
    folder.mkdir()
    corpus = hostile.corpus()
    for name, (data, _) in corpus.items():
        (folder / name).write_bytes(data)
    good = sorted(SAMPLES.glob("*.jpg"))[:4]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    # collision: a glob over two folders holding a tar of the same name, each with a different x.jpg
    a, b = (good[0].read_bytes(), good[1].read_bytes())
    write_tar(tmp_path / "tars" / "alice" / "batch.tar", {"x.jpg": a})
    write_tar(tmp_path / "tars" / "bob" / "batch.tar", {"x.jpg": b})
    # credential: a presigned URL (to a closed port: a read error) and a URL with userinfo
    presigned = f"https://127.0.0.1:9/b/p/y.jpg?X-Amz-Credential=AKIAFAKE&X-Amz-Signature={SECRET}"
    manifest = tmp_path / "urls.txt"
    manifest.write_text(f"{presigned}\ns3://AKIAFAKE:{SECRET}@bucket/q/z.jpg\n")
    # a bomb that would take 3 GiB if inflated whole (tifffile did): the run must stay within its budget
    w = h = 1024
    (folder / "bomb_3gib.tif").write_bytes(hostile.tiff_rgb48_deflate(zeros_deflate(3 << 30), w, h))
    out = tmp_path / "out"
    t = time.time()
    with _Peaks() as peaks:
        r = CliRunner().invoke(app, [
            "colorize", str(folder), str(tmp_path / "tars" / "*" / "batch.tar"), str(manifest),
            "--output", str(out), "--checkpoint", tiny_ckpt, "--format", "png", "--retries", "1",
            "--memory-per-cpu", str(BUDGET),
        ])
    elapsed = time.time() - t
    assert r.exit_code == 0, r.output
    assert SECRET not in r.output

    tars = [f"{tmp_path / 'tars' / who / 'batch.tar'}#x.jpg" for who in ("alice", "bob")]
    sources = ([str(folder / n) for n in corpus] + [str(folder / "bomb_3gib.tif")] + [str(folder / p.name) for p in good] + tars
               + ["https://127.0.0.1:9/b/p/y.jpg", "s3://***@bucket/q/z.jpg"])
    rows = one_row_each(out, sources)
    for row in rows.values():
        assert SECRET not in json.dumps(row), row
    for p in good:
        assert rows[str(folder / p.name)]["status"] == "ok"
    # two tars, two outputs, each its own member's pixels
    outs = [rows[s]["output"] for s in tars]
    assert all(rows[s]["status"] == "ok" for s in tars) and outs[0] != outs[1]
    assert all(Path(o).is_file() for o in outs) and Path(outs[0]).read_bytes() != Path(outs[1]).read_bytes()
    # hostile files: a row each, never a failed task; the ones with whole pixels are written
    for name, (_, cls) in corpus.items():
        row = rows[str(folder / name)]
        expect = hostile.EXPECTED.get(name, "ok")
        if expect == "ok":
            assert row["status"] == "ok", (name, cls, row["error"])
        else:
            assert ledger.reason_of(row["error"]) == expect, (name, cls, row["error"])
        assert ledger.reason_of(row["error"]) != "internal", (name, row["error"])  # each class is handled, not caught
    for src in sources[-2:]:
        assert rows[src]["status"] == "error"
    # every output decodes again
    written = [Path(r["output"]) for r in rows.values() if r["status"] == "ok"]
    assert written and all(p.is_file() for p in written)
    for p in written:
        _decodes(p.read_bytes())
    # the bomb's pixels are whole: written from Pillow's 8-bit path (which reads a strip only as far as its
    # pixels go), with the refused 16-bit path in its report
    bomb = rows[str(folder / "bomb_3gib.tif")]
    assert bomb["status"] == "ok" and "depth" in json.loads(bomb["metadata"]).get("dropped", {}), bomb
    # memory: no worker's peak above the budget plus a worker's own footprint
    peak = peaks.peak
    assert peak and max(peak.values()) < PEAK_LIMIT, {pid: round(v / 2**30, 2) for pid, v in peak.items()}
    summary = json.loads((out / "_SUCCESS.json").read_text())
    assert summary["inputs"] == len(sources)
    print(f"hostile run: {len(sources)} inputs in {elapsed:.1f} s, worker peak {max(peak.values()) / 2**30:.2f} GiB")
