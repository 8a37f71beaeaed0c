"""Hardening acceptance: bad inputs, a killed model actor, S3 faults, unsafe checkpoints, names that try to
escape OUTPUT, and credentials that must never show up anywhere.

Real local Ray (``ray_local``), real moto S3 server (``s3_env``) and, for faults, tests/faultproxy.py in
front of it. Nothing of Ray or S3 is mocked.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import signal
import tarfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raycolor import inputs, storage
from raycolor.config import ColorizeConfig, StorageConfig
from raycolor.core import checkpoint, images
from raycolor.core.colorize import full_l
from raycolor.core.model import build_colorizer
from raycolor import paths
from raycolor.outputs.ledger import read_manifest
from raycolor.pipelines.colorize import colorize
from tests import badimages
from tests.faultproxy import FaultProxy, always, combine, first_n, random_faults

slow = pytest.mark.slow


def _lightness(rgb: np.ndarray) -> np.ndarray:
    return full_l(rgb)[0].numpy()


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _tar_member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tf:
        return tf.extractfile(name).read()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _plasma_allocated_bytes() -> int:
    """Bytes of shared memory the object store (plasma) of this Ray cluster has touched so far.

    The raylet holds the store's (deleted) /dev/shm file open; its allocated blocks only grow, so the
    difference across a run is how far that run pushed the store's high-water mark.
    """
    import ray

    pid = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "plasma" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
        except OSError:
            continue
    return total


def _one_row_per_source(rows: list[dict], expected_sources) -> dict[str, dict]:
    srcs = [r["source"] for r in rows]
    assert len(srcs) == len(set(srcs)), "a source has more than one manifest row"
    assert set(srcs) == set(expected_sources)
    return {r["source"]: r for r in rows}


# --------------------------------------------------------------------------------------------
# 1. bad-input corpus through the Ray pipeline; 5a. names cannot escape OUTPUT
# --------------------------------------------------------------------------------------------

# names that try to leave OUTPUT: tar member name -> where its output must land under images/
NASTY_TAR = {
    "..\\..\\win.jpg": "names.tar/win.png",
    "C:\\temp\\drive.jpg": "names.tar/temp/drive.png",
    "a/../../../up.jpg": "names.tar/a/up.png",
    "/etc/abs2.jpg": "names.tar/etc/abs2.png",
    "dir with space/ñandú 写真.jpg": "names.tar/dir with space/ñandú 写真.png",
}
ESCAPE_NAMES = ("evil", "abs", "abs2", "win", "drive", "up", "good")


def _escape_candidates(*dirs: Path) -> set[Path]:
    return {d / f"{n}{ext}" for d in dirs for n in ESCAPE_NAMES for ext in (".png", ".jpg")}


@slow
def test_bad_corpus_one_row_each_right_output_or_reason(ray_local, tiny_ckpt, tmp_path):
    src = tmp_path / "in" / "corpus"
    expected = badimages.make_corpus(src)  # {name: reason or None}
    sub = src / "sub dír ñ"
    sub.mkdir()
    (sub / "ünï cödé 写真.JPG").write_bytes(_jpeg(_noise(9, 14, 11)))
    expected["sub dír ñ/ünï cödé 写真.JPG"] = None
    evil_tar = tmp_path / "in" / "evil.tar"
    badimages.make_tar_with_bad_members(evil_tar)
    names_tar = tmp_path / "in" / "names.tar"
    _tar(names_tar, {name: _jpeg(_noise(10, 12, i)) for i, name in enumerate(NASTY_TAR)})

    # source -> (expected reason or None, encoded input bytes); every corpus file is an input
    want: dict[str, tuple[str | None, bytes]] = {
        str(src / name): (reason, (src / name).read_bytes()) for name, reason in expected.items()
    }
    assert all(Path(name).suffix.lower() in inputs.IMAGE_SUFFIXES for name in expected)
    # symlink member: never an item; '../evil.jpg' and '/abs.jpg' are regular files, read safely
    for member in ("ok/good.jpg", "../evil.jpg", "/abs.jpg"):
        want[f"{evil_tar}#{member}"] = (None, _tar_member(evil_tar, member))
    for member in NASTY_TAR:
        want[f"{names_tar}#{member}"] = (None, _tar_member(names_tar, member))

    out = tmp_path / "deep" / "a" / "out"
    cwd = Path.cwd()
    watch = _escape_candidates(Path("/"), cwd, tmp_path, out.parent, out.parent.parent)
    existed = {p for p in watch if p.exists()}
    before = _files(tmp_path)
    plasma0 = _plasma_allocated_bytes()

    s = colorize(
        ColorizeConfig(
            inputs=(str(src), str(evil_tar), str(names_tar)),
            output=str(out),
            checkpoint=tiny_ckpt,
            max_pixels=badimages.BOMB_LIMIT,
            batch_size=4,
        )
    )

    # memory stays bounded: the object store's high-water mark grows by < 8 MB. Decoding the bomb
    # (5 Mpx) would put its 10 MB uint16 L plane there twice (decode -> model), ~20 MB.
    grown = _plasma_allocated_bytes() - plasma0
    assert grown < 8 * 2**20, f"the object store grew by {grown / 2**20:.1f} MiB"

    n_err = sum(1 for reason, _ in want.values() if reason)
    assert (s.inputs, s.ok, s.error, s.skipped) == (len(want), len(want) - n_err, n_err, 0)
    rows = _one_row_per_source(read_manifest(str(out)).to_pylist(), want)
    assert f"{evil_tar}#link.jpg" not in rows

    upright_l = _lightness(badimages.upright_orientation_image())
    grey16_l = _lightness(np.repeat(np.array([badimages.GREY16_EXPECTED] * 2, np.uint8)[:, :, None], 3, axis=2))
    ok_outputs = set()
    for source, (reason, data) in want.items():
        r = rows[source]
        if reason:
            assert r["status"] == "error" and r["output"] is None, source
            assert r["error"].startswith(f"{reason}:"), (source, r["error"])
            continue
        assert r["status"] == "ok" and r["error"] is None, (source, r["error"])
        out_path = Path(r["output"])
        assert out in out_path.parents and out_path.is_file(), r["output"]
        ok_outputs.add(out_path)
        decoded = images.decode_rgb(data, max_pixels=badimages.BOMB_LIMIT)
        result = np.asarray(Image.open(out_path).convert("RGB"))
        assert result.shape == decoded.shape and (r["width"], r["height"]) == decoded.shape[1::-1], source
        got_l = _lightness(result)
        # the colorized output keeps the decoded input's lightness (within one L unit)
        assert np.abs(got_l - _lightness(decoded)).max() <= 1.0, source
        name = source.rsplit("/", 1)[-1]
        if name.startswith("orient_"):
            # upright: the right size, and each corner has the upright picture's lightness
            h, w = upright_l.shape
            assert (w, h) == badimages.ORIENT_SIZE and result.shape[:2] == (h, w)
            for y, x in ((2, 2), (2, w - 3), (h - 3, 2), (h - 3, w - 3)):
                assert abs(got_l[y, x] - upright_l[y, x]) < 6, (name, y, x, got_l[y, x], upright_l[y, x])
        elif name == "cmyk.jpg":
            w = result.shape[1]
            for cols, rgb in ((slice(2, w // 2 - 2), badimages.CMYK_LEFT_RGB), (slice(w // 2 + 2, w - 2), badimages.CMYK_RIGHT_RGB)):
                ref = float(_lightness(np.array([[rgb]], np.uint8))[0, 0])
                assert abs(float(got_l[:, cols].mean()) - ref) < 4, (name, rgb)
        elif name in ("grey16.png", "grey16.tif", "rgb48.tif"):
            assert np.abs(got_l - grey16_l).max() <= 1.0, name
    # the names with spaces and non-ASCII letters keep their names
    assert (out / "images" / "photo with space.png").is_file()
    assert (out / "images" / "fotografía_ü.png").is_file()
    assert (out / "images" / "sub dír ñ" / "ünï cödé 写真.png").is_file()
    # the tars are roots of their own beside the folder: key rule 2 gives each its own namespace on a first run
    ns = paths.namespace_for(str(names_tar))
    for member, rel in NASTY_TAR.items():
        assert rows[f"{names_tar}#{member}"]["output"] == str(out / "images" / ns / rel)

    # 5a. every file the run wrote is under OUTPUT: the images above, the manifest, _SUCCESS.json
    new = _files(tmp_path) - before
    assert all(out in p.parents for p in new), sorted(map(str, new - {p for p in new if out in p.parents}))
    assert _files(out / "images") == ok_outputs
    assert {p.name for p in new if p.parent == out} == {"_SUCCESS.json"}
    assert all(p.suffix == ".parquet" for p in _files(out / "manifest"))
    assert {p for p in watch if p.exists()} == existed, "an output escaped OUTPUT"
    done = json.loads((out / "_SUCCESS.json").read_text())
    assert (done["inputs"], done["ok"], done["error"]) == (s.inputs, s.ok, s.error)


# --------------------------------------------------------------------------------------------
# 2. a model actor dies mid-run
# --------------------------------------------------------------------------------------------


@slow
def test_killed_model_actor_is_replaced_and_every_input_done_once(ray_local, tiny_ckpt, tmp_path):
    import ray

    from tests.drivers import colorize_in_thread, model_actor_mid_run

    src = tmp_path / "in"
    src.mkdir()
    n = 12
    for i in range(n):
        Image.fromarray(_noise(24, 32, 100 + i)).save(src / f"{i:03d}.png")
    out = tmp_path / "out"
    # small shards, so manifest parts appear while the run goes on
    thread, result = colorize_in_thread(
        ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt, batch_size=1, shard_size=2))
    victim = model_actor_mid_run(thread, result, lambda: bool(list((out / "manifest").glob("*.parquet"))), timeout=180)
    rows_at_kill = read_manifest(str(out)).num_rows
    os.kill(victim["Pid"], signal.SIGKILL)  # a crash, not ray.kill (which would forbid a restart)
    thread.join(timeout=240)
    assert not thread.is_alive(), "colorize did not finish after the actor was killed"
    assert "error" not in result, "".join(traceback.format_exception(result["error"]))
    assert rows_at_kill < n, "the kill must land mid-run for this test to mean anything"

    s = result["summary"]
    assert (s.inputs, s.ok, s.error) == (n, n, 0)
    rows = _one_row_per_source(read_manifest(str(out)).to_pylist(), [str(p) for p in src.iterdir()])
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i:03d}.png" for i in range(n))
    # the same actor came back (Ray Data's pool: max_restarts=-1, max_task_retries=-1)
    after = ray._private.state.actors(actor_id=victim["ActorID"])
    assert after["NumRestarts"] >= 1, after


# --------------------------------------------------------------------------------------------
# 3. S3 faults, through tests/faultproxy.py in front of the moto server
# --------------------------------------------------------------------------------------------

# One call of ours (storage.read_item / write_bytes_atomic, one attempt) makes this many requests when
# every one of them is reset: storage.filesystem turns s3fs's retry loop off and keeps botocore's at 3
# attempts; the rest is the HTTP stack's reconnects of a dropped keep-alive connection. Asserted by test_s3_persistent_faults_become_error_rows; if a library update
# changes it, that test says so and the number below must follow.
INNER_REQUESTS_PER_CALL_ON_RESET = 8


def _signed_headers(method: str, url: str, body: bytes = b"", headers: dict | None = None) -> dict:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    S3SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def test_faultproxy_forwards_keepalive_chunked_head_and_injects(s3_env):
    """The proxy itself, on raw HTTP: what botocore/aiohttp send must arrive intact at moto."""
    import http.client

    bucket = s3_env.bucket("proxy")
    key = f"/{bucket}/dir/ü x.bin"
    quoted = key.replace(" ", "%20").replace("ü", "%C3%BC")
    with FaultProxy(s3_env.endpoint) as proxy:
        host, port = proxy.url.rsplit("/", 1)[1].split(":")
        url = proxy.url + quoted

        def send(method: str, body=None, headers=None, chunked=False):
            signed = _signed_headers(method, url, b"hello world" if chunked else b"", headers)
            conn.request(method, quoted, body=body, headers=signed, encode_chunked=chunked)
            resp = conn.getresponse()
            return resp, resp.read()

        # one keep-alive connection: a chunked PUT, GET, HEAD, a ranged GET
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        resp, _ = send("PUT", iter([b"hello ", b"world"]), chunked=True)
        assert resp.status == 200
        resp, body = send("GET")
        assert (resp.status, body) == (200, b"hello world")
        resp, body = send("HEAD")
        assert (resp.status, resp.getheader("Content-Length"), body) == (200, "11", b"")
        resp, body = send("GET", headers={"Range": "bytes=6-10"})
        assert (resp.status, body) == (206, b"world")
        assert proxy.counts["forwarded"] == 4 and proxy.counts["upstream_error"] == 0
        assert [m for m, _, _ in proxy.log] == ["PUT", "GET", "HEAD", "GET"] and proxy.log[0][1] == key

        proxy.policy = always("slowdown", where=lambda m, k: k == key)
        resp, body = send("GET")
        assert resp.status == 503 and b"<Code>SlowDown</Code>" in body
        resp, body = send("HEAD")  # the connection is still usable after a 503
        assert (resp.status, body) == (503, b"")

        proxy.policy = always("reset")
        with pytest.raises(ConnectionError):  # reset or closed: no response at all
            send("GET")
        conn.close()
        assert (proxy.counts["slowdown"], proxy.counts["reset"], proxy.faults) == (2, 1, 3)
    assert s3_env.fs().cat_file(key.lstrip("/")) == b"hello world"

    # the seeded policy is reproducible and close to its rate
    def draws(seed: int) -> list:
        policy = random_faults(0.2, seed=seed)
        return [policy("GET", "/b/k") for _ in range(1000)]

    assert draws(3) == draws(3) != draws(4)
    assert 150 < sum(d is not None for d in draws(3)) < 250 and {"slowdown", "reset", None} == set(draws(3))


def _s3_inputs(fs, bucket: str, names) -> dict[str, np.ndarray]:
    arrays = {}
    for i, name in enumerate(names):
        arrays[name] = _noise(12 + i, 16, 200 + i)
        fs.pipe_file(f"{bucket}/in/{name}", _jpeg(arrays[name]))
    return arrays


def _colorize_through(proxy: FaultProxy, bucket: str, ckpt: str, *, retries: int, **kw):
    """bucket/in -> bucket/out, every request through the fault proxy."""
    config = ColorizeConfig(
        inputs=(f"s3://{bucket}/in",),
        output=f"s3://{bucket}/out",
        checkpoint=ckpt,
        storage=StorageConfig(s3_endpoint=proxy.url, retries=retries),
        **kw,
    )
    return colorize(config)


def _outcomes(proxy: FaultProxy, method: str, key: str) -> list[str]:
    return [o for m, k, o in proxy.log if (m, k) == (method, key)]


@slow
def test_s3_persistent_faults_become_error_rows(ray_local, s3_env, tiny_ckpt):
    fs = s3_env.fs()
    bucket = s3_env.bucket("persistent")
    _s3_inputs(fs, bucket, ["a.jpg", "unreadable.jpg"])  # few: each failing call of ours takes ~5-10 s
    images_prefix = f"/{bucket}/out/images/"
    unreadable = f"/{bucket}/in/unreadable.jpg"
    policy = combine(
        always("reset", where=lambda m, k: m == "PUT" and k.startswith(images_prefix)),
        always("reset", where=lambda m, k: m == "GET" and k == unreadable),
    )
    out = f"s3://{bucket}/out"
    with FaultProxy(s3_env.endpoint, policy) as proxy:
        s = _colorize_through(proxy, bucket, tiny_ckpt, retries=1)
    # never a silent loss: every input has its one row, each saying what went wrong
    assert (s.inputs, s.ok, s.error) == (2, 0, 2)
    rows = _one_row_per_source(read_manifest(out).to_pylist(), [f"s3://{bucket}/in/{n}" for n in ("a.jpg", "unreadable.jpg")])
    r = rows[f"s3://{bucket}/in/a.jpg"]
    assert r["status"] == "error" and r["output"] is None and r["error"].startswith("write_failed:"), r
    r = rows[f"s3://{bucket}/in/unreadable.jpg"]
    assert r["status"] == "error" and r["error"].startswith("read_failed:"), r
    assert not fs.exists(f"{bucket}/out/images") or not fs.find(f"{bucket}/out/images")
    assert json.loads(fs.cat_file(f"{bucket}/out/_SUCCESS.json"))["error"] == 2
    # one call of ours with retries=1 = this many requests, all refused (the number case B relies on)
    for method, key in (("PUT", f"{images_prefix}a.png"), ("GET", unreadable)):
        assert _outcomes(proxy, method, key) == ["reset"] * INNER_REQUESTS_PER_CALL_ON_RESET, (method, key)


@slow
def test_s3_transient_faults_every_output_written(ray_local, s3_env, tiny_ckpt):
    fs = s3_env.fs()
    bucket = s3_env.bucket("transient")
    arrays = _s3_inputs(fs, bucket, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    put_a = f"/{bucket}/out/images/a.png"
    get_b = f"/{bucket}/in/b.jpg"
    policy = combine(
        # more consecutive failures than one call of ours makes: only our own retry gets these through
        first_n(INNER_REQUESTS_PER_CALL_ON_RESET, "reset", where=lambda m, k: (m, k) == ("PUT", put_a)),
        first_n(INNER_REQUESTS_PER_CALL_ON_RESET, "reset", where=lambda m, k: (m, k) == ("GET", get_b)),
        # and ~20% of every request (listing, reads, image and manifest writes, _SUCCESS.json): 503 or reset
        random_faults(0.2, seed=7),
    )
    out = f"s3://{bucket}/out"
    with FaultProxy(s3_env.endpoint, policy) as proxy:
        s = _colorize_through(proxy, bucket, tiny_ckpt, retries=3, batch_size=2)
    assert (s.inputs, s.ok, s.error) == (4, 4, 0)
    rows = _one_row_per_source(read_manifest(out).to_pylist(), [f"s3://{bucket}/in/{n}" for n in arrays])
    for name, arr in arrays.items():
        r = rows[f"s3://{bucket}/in/{name}"]
        assert r["output"] == f"s3://{bucket}/out/images/{name[:-4]}.png"
        assert np.asarray(Image.open(io.BytesIO(fs.cat_file(r["output"][5:])))).shape == arr.shape
    assert proxy.counts["slowdown"] > 0 and proxy.counts["reset"] > 0
    for method, key in (("PUT", put_a), ("GET", get_b)):
        seen = _outcomes(proxy, method, key)
        assert seen[:INNER_REQUESTS_PER_CALL_ON_RESET] == ["reset"] * INNER_REQUESTS_PER_CALL_ON_RESET
        assert "forwarded" in seen[INNER_REQUESTS_PER_CALL_ON_RESET:], seen


# --------------------------------------------------------------------------------------------
# 4. a checkpoint whose weights.pt holds arbitrary objects
# --------------------------------------------------------------------------------------------


class _Gadget:
    """Unpickling this runs os.mkdir(path): arbitrary code, harmless here."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_checkpoint_with_pickled_objects_is_refused_by_weights_only(tmp_path):
    import hashlib

    d = tmp_path / "tiny_ckpt"
    checkpoint.save(str(d), build_colorizer(weights=None), render_size=32)
    marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    torch.save({"encoder.features.0.weight": _Gadget(str(marker))}, buf)
    payload = buf.getvalue()
    (d / "weights.pt").write_bytes(payload)
    # a matching model_id, so the hash check passes and weights_only is all that stands in the way
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_id"] = hashlib.sha256(payload).hexdigest()[:16]
    (d / "config.json").write_text(json.dumps(cfg))
    assert checkpoint.read_meta(str(d)).model_id == cfg["model_id"]

    with pytest.raises((pickle.UnpicklingError, checkpoint.CheckpointError)) as err:
        checkpoint.load(str(d))
    assert "_Gadget" in str(err.value) or "mkdir" in str(err.value), str(err.value)
    assert not marker.exists(), "the checkpoint ran code while loading"
    # the payload is live: without weights_only it would have run
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.is_dir()


# --------------------------------------------------------------------------------------------
# 5b. credentials never show up in summaries, manifests, errors or logs
# --------------------------------------------------------------------------------------------

SECRET = "Zx9-fake-secret-7c1e4b"  # a password in URIs
TOKEN = "FAKE-SESSION-TOKEN-4d1c8a0e93"  # a session token in the driver's environment


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_log_text(since: float) -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    chunks = []
    for p in logs.rglob("*"):
        try:
            if p.is_file() and p.stat().st_mtime >= since:
                chunks.append(p.read_text(errors="replace"))
        except OSError:
            continue
    return "\n".join(chunks)


@slow
def test_no_credentials_in_summary_manifest_errors_or_logs(ray_local, s3_env, tiny_ckpt, tmp_path, monkeypatch, capfd):
    fs = s3_env.fs()
    bucket = s3_env.bucket("secrets")
    fs.pipe_file(f"{bucket}/in/good.jpg", _jpeg(_noise(12, 16, 1)))
    fs.pipe_file(f"{bucket}/in/also.jpg", _jpeg(_noise(12, 16, 2)))
    port = _closed_port()
    manifest = tmp_path / "list.txt"
    manifest.write_text(
        "\n".join(
            [
                f"s3://{bucket}/in/good.jpg",
                f"s3://AKIAFAKEKEYID:{SECRET}@{bucket}/in/also.jpg",  # credentials in a URI
                f"https://user:{SECRET}@127.0.0.1:{port}/x.jpg",  # ... over HTTP, to a closed port
                f"s3://{bucket}/in/missing.jpg",  # a missing object
                f"s3://no-such-bucket-{bucket}/x.jpg",  # an unreachable bucket
            ]
        )
        + "\n"
    )
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    started = time.time()
    out = tmp_path / "out"
    storage = StorageConfig(s3_endpoint=s3_env.endpoint, retries=2)
    s = colorize(ColorizeConfig(inputs=(str(manifest),), output=str(out), checkpoint=tiny_ckpt, storage=storage))
    assert (s.inputs, s.ok, s.error) == (5, 1, 4)
    rows = read_manifest(str(out)).to_pylist()
    errors = {r["source"]: r["error"] for r in rows if r["status"] == "error"}
    assert len(errors) == 4 and all(e.split(":")[0] == "read_failed" for e in errors.values()), errors

    texts = {
        "summary": json.dumps(asdict(s)),
        "_SUCCESS.json": (out / "_SUCCESS.json").read_text(),
        "manifest": json.dumps(rows, default=str),
        "manifest files": "\n".join(p.read_bytes().decode("latin-1") for p in (out / "manifest").iterdir()),
    }
    # inputs, outputs and checkpoints that carry credentials are refused with a clean message
    bad_configs = {
        "input": ColorizeConfig(inputs=(f"s3://AKIAFAKEKEYID:{SECRET}@{bucket}/in",), output=str(out), checkpoint=tiny_ckpt),
        "http input": ColorizeConfig(inputs=(f"https://user:{SECRET}@127.0.0.1:{port}/s.tar",), output=str(out), checkpoint=tiny_ckpt),
        "output": ColorizeConfig(inputs=(str(manifest),), output=f"s3://k:{SECRET}@{bucket}/out", checkpoint=tiny_ckpt),
        "checkpoint": ColorizeConfig(inputs=(str(manifest),), output=str(out), checkpoint=f"https://u:{SECRET}@127.0.0.1:{port}/tiny_ckpt"),
    }
    for what, config in bad_configs.items():
        with pytest.raises(Exception) as err:  # noqa: PT011 - any error, as long as it is clean
            colorize(dataclasses.replace(config, storage=storage))
        texts[f"{what} error"] = "".join(traceback.format_exception(err.value))
    time.sleep(1.5)  # let Ray's log monitor flush worker output to the driver and to the log files
    captured = capfd.readouterr()
    texts["driver stdout"], texts["driver stderr"] = captured.out, captured.err
    texts["ray logs"] = _ray_log_text(started - 1)
    assert texts["ray logs"], "found no Ray log files to check"
    leaks = [
        f"{secret!r} in the {name}: ...{text[max(0, text.find(secret) - 150):text.find(secret) + 40]}..."
        for name, text in texts.items()
        for secret in (SECRET, TOKEN)
        if secret in text
    ]
    assert not leaks, "\n".join(leaks)
    assert "***" in texts["manifest"]  # the entries with credentials are still there, redacted


def test_credentials_in_uris_are_refused_and_never_listed(tmp_path):
    """Core rules behind the test above, without Ray."""
    for uri in (
        f"s3://AKIAFAKEKEYID:{SECRET}@bucket/x.jpg",
        f"s3://{SECRET}@bucket/x.jpg",
        f"https://user:{SECRET}@example.invalid/x.jpg",
        f"https://{SECRET}@example.invalid/x.jpg",
        f"gs://user:{SECRET}@bucket/x.jpg",
    ):
        with pytest.raises(storage.InputError, match="credentials in URIs are not supported") as err:
            storage.filesystem(uri)
        assert SECRET not in str(err.value) and err.value.__cause__ is None
    # '@' elsewhere is not a credential: a key like icon@2x.png, a local path
    assert storage.filesystem("s3://bucket/icons/icon@2x.png")[1] == "bucket/icons/icon@2x.png"
    assert storage.filesystem(str(tmp_path / "a@b.png"))[1] == str(tmp_path / "a@b.png")

    manifest = tmp_path / "list.txt"
    manifest.write_text(f"s3://AKIAFAKEKEYID:{SECRET}@bucket/p/x.jpg\nhttps://u:{SECRET}@example.invalid/q/y.jpg\n")
    items = inputs.list_items([str(manifest)])
    assert [(it.source, it.uri, it.relpath) for it in items] == [
        ("s3://***@bucket/p/x.jpg", "s3://***@bucket/p/x.jpg", "bucket/p/x.jpg"),  # key rule 2 keeps the bucket
        ("https://***@example.invalid/q/y.jpg", "https://***@example.invalid/q/y.jpg", "example.invalid/q/y.jpg"),
    ]
    with pytest.raises(storage.InputError, match="credentials in URIs are not supported"):
        storage.read_item(items[0])
