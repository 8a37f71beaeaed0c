"""The shard ledger through the real pipeline (local Ray, moto S3, tests/faultproxy.py): nothing lost across
runs or drivers, manifest shards, --retry-errors."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import jpeg_bytes, one_row_each, write_image
from typer.testing import CliRunner

from raycolor.cli import app
from raycolor.config import ColorizeConfig, StorageConfig
from raycolor.core import images
from raycolor.core.colorize import full_l
from raycolor.outputs.ledger import OutputLocked, read_manifest
from raycolor.pipelines import runtime
from raycolor.pipelines.colorize import colorize
from tests.faultproxy import FaultProxy, always, combine

pytestmark = pytest.mark.slow


def _l(data: bytes):
    return full_l(images.decode_rgb(data))


def test_two_folders_into_one_output_nothing_overwritten(ray_local, tiny_ckpt, tmp_path, monkeypatch):
    a, b = tmp_path / "A" / "scans", tmp_path / "B" / "scans"
    write_image(a / "0001.jpg", 1)
    write_image(a / "0002.jpg", 2)
    write_image(b / "0001.jpg", 3, (30, 20))  # same name as A's, other picture
    write_image(b / "0003.jpg", 4)
    out = tmp_path / "OUT"
    sa = colorize(ColorizeConfig(inputs=(str(a),), output=str(out), checkpoint=tiny_ckpt))
    assert (sa.ok, sa.settings["namespaces"]) == (2, {str(a): ""})
    first = (out / "images" / "0001.png").read_bytes()

    sb = colorize(ColorizeConfig(inputs=(str(b),), output=str(out), checkpoint=tiny_ckpt))
    ns = sb.settings["namespaces"][str(b)]
    assert sb.ok == 2 and ns.startswith("scans-")
    assert (out / "images" / "0001.png").read_bytes() == first  # A's output untouched
    rows = one_row_each(out, [str(a / "0001.jpg"), str(a / "0002.jpg"), str(b / "0001.jpg"), str(b / "0003.jpg")])
    outputs = [r["output"] for r in rows.values()]
    assert len(set(outputs)) == 4 and all(r["status"] == "ok" for r in rows.values())
    assert rows[str(b / "0001.jpg")]["output"] == str(out / "images" / ns / "0001.png")
    for src, r in rows.items():  # every row points at its own source's picture (L kept)
        assert (_l(Path(r["output"]).read_bytes()) - _l(Path(src).read_bytes())).abs().max() <= 1.0

    # re-running either root keeps its names and does nothing; both together too
    again = colorize(ColorizeConfig(inputs=(str(a), str(b)), output=str(out), checkpoint=tiny_ckpt))
    assert (again.inputs, again.processed, again.skipped) == (4, 0, 4)
    assert again.settings["namespaces"] == {str(a): "", str(b): ns}

    # a second driver on a locked OUTPUT: exit 2, one line, nothing written
    (out / "_lock.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": time.time()}))
    monkeypatch.setattr(runtime, "connect", lambda address, **kw: "local")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    r = CliRunner().invoke(app, ["colorize", str(a), "--output", str(out), "--checkpoint", tiny_ckpt])
    assert r.exit_code == 2 and "in use by another raycolor driver (host elsewhere" in r.output, r.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    r = CliRunner().invoke(app, ["colorize", str(a), "--output", str(out), "--checkpoint", tiny_ckpt, "--force-unlock"])
    assert r.exit_code == 0, r.output
    assert not (out / "_lock.json").exists()


DRIVER = textwrap.dedent(
    """
    import sys, ray
    from raycolor.config import ColorizeConfig
    from raycolor.pipelines.colorize import colorize
    ray.init()  # RAY_ADDRESS: the session's Ray, joined as a cluster job would
    s = colorize(ColorizeConfig(inputs=(sys.argv[1],), output=sys.argv[2], checkpoint=sys.argv[3], batch_size=1, shard_size=3))
    print("DONE", s.ok)
    """
)


def test_second_concurrent_driver_is_refused_and_nothing_is_lost(ray_address, tiny_ckpt, tmp_path):
    from tests.drivers import finish, joining_env, output, spawn

    src = tmp_path / "in"
    n = 16
    for i in range(n):
        write_image(src / f"{i:03d}.png", 10 + i)
    out = tmp_path / "out"
    proc = spawn([sys.executable, "-c", DRIVER, str(src), str(out), tiny_ckpt], joining_env(ray_address), tmp_path / "logs")
    try:
        deadline = time.time() + 600
        while not (out / "_lock.json").exists():
            assert proc.poll() is None and time.time() < deadline, output(proc)
            time.sleep(0.1)
        holder = json.loads((out / "_lock.json").read_text())
        with pytest.raises(OutputLocked, match=f"pid {holder['pid']}"):
            colorize(ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt))
        assert proc.poll() is None, "the first driver must still be running when the second is refused"
    finally:
        text, err = finish(proc, timeout=300)
    assert proc.returncode == 0 and f"DONE {n}" in text, (text + err)[-3000:]
    one_row_each(out, [str(p) for p in src.iterdir()])
    assert not (out / "_lock.json").exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i:03d}.png" for i in range(n))


def test_manifest_shards_txt_and_parquet_folder_and_glob(ray_local, tiny_ckpt, tmp_path):
    pics = tmp_path / "pics"
    for i in range(7):
        write_image(pics / f"p{i}.jpg", 30 + i)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "part-0.txt").write_text("# first part\n" + "".join(f"{pics}/p{i}.jpg\n" for i in range(4)) + f"{pics}/p0.jpg\n")
    pq.write_table(pa.table({"uri": [f"{pics}/p{i}.jpg" for i in range(4, 7)] + [f"{pics}/missing.jpg"]}), lists / "part-1.parquet")
    out = tmp_path / "out"
    s = colorize(ColorizeConfig(inputs=(str(lists),), output=str(out), checkpoint=tiny_ckpt, shard_size=2))
    # part-0: 5 entries in 3 shards (p0 twice, in different shards: one row per shard it is in);
    # part-1: 4 rows in 2 shards, one of them missing -> an error row
    assert s.shards == 5 and len(list((out / "manifest").iterdir())) == 5 == len(list((out / "_stats").iterdir()))
    assert (s.inputs, s.ok, s.error) == (9, 8, 1)
    rows = read_manifest(str(out)).to_pylist()
    assert sorted(r["source"] for r in rows if r["status"] == "error") == [f"{pics}/missing.jpg"]
    assert {r["output"] for r in rows if r["status"] == "ok"} == {str(out / "images" / str(pics).lstrip("/") / f"p{i}.png") for i in range(7)}
    again = colorize(ColorizeConfig(inputs=(str(lists),), output=str(out), checkpoint=tiny_ckpt, shard_size=2))
    assert (again.processed, again.shards_skipped) == (0, 5)


def test_retry_errors_after_persistent_s3_faults(ray_local, s3_env, tiny_ckpt):
    fs = s3_env.fs()
    bucket = s3_env.bucket("retry")
    names = ["a.jpg", "b.jpg", "c.jpg"]
    for i, name in enumerate(names):
        fs.pipe_file(f"{bucket}/in/{name}", jpeg_bytes(i))
    fs.pipe_file(f"{bucket}/in/bad.jpg", b"<html>not an image</html>")  # permanent: stays an error
    want = [f"s3://{bucket}/in/{n}" for n in names + ["bad.jpg"]]
    out = f"s3://{bucket}/out"
    policy = combine(
        always("reset", where=lambda m, k: m == "PUT" and k == f"/{bucket}/out/images/a.png"),
        always("reset", where=lambda m, k: m == "GET" and k == f"/{bucket}/in/b.jpg"),
    )

    def run(endpoint, retry="none"):
        return colorize(ColorizeConfig(inputs=(f"s3://{bucket}/in",), output=out, checkpoint=tiny_ckpt, retry_errors=retry,
                                       shard_size=2, storage=StorageConfig(s3_endpoint=endpoint, retries=1)))

    with FaultProxy(s3_env.endpoint, policy) as proxy:
        s = run(proxy.url)
    assert (s.inputs, s.ok, s.error) == (4, 1, 3)
    reasons = {src: (r["error"] or "").split(":")[0] for src, r in one_row_each(out, want).items()}
    assert reasons == {want[0]: "write_failed", want[1]: "read_failed", want[2]: "", want[3]: "not_an_image"}

    # faults gone: a plain re-run changes nothing (error rows are final without --retry-errors)
    plain = run(s3_env.endpoint)
    assert (plain.processed, plain.ok, plain.error) == (0, 1, 3)
    retried = run(s3_env.endpoint, "transient")
    assert (retried.processed, retried.inputs, retried.ok, retried.error) == (2, 4, 3, 1)
    rows = one_row_each(out, want)
    assert {src for src, r in rows.items() if r["status"] == "ok"} == set(want[:3])
    for src in want[:3]:
        assert fs.exists(rows[src]["output"][5:])
    assert rows[want[3]]["error"].startswith("not_an_image")
    # all: the permanent one is tried again (and fails again); still one row each
    everything = run(s3_env.endpoint, "all")
    assert (everything.processed, everything.ok, everything.error) == (1, 3, 1)
    one_row_each(out, want)
    assert json.loads(fs.cat_file(f"{bucket}/out/_SUCCESS.json"))["ok"] == 3


KILLED_DRIVER = textwrap.dedent(
    """
    import sys, ray
    from raycolor.config import ColorizeConfig, DerivativeSpec
    from raycolor.pipelines.colorize import colorize
    ray.init()  # RAY_ADDRESS: the session's Ray, joined as a cluster job would
    colorize(ColorizeConfig(inputs=(sys.argv[1],), output=sys.argv[2], checkpoint=sys.argv[3], batch_size=1, shard_size=3,
                            layout=sys.argv[4], derivatives=(DerivativeSpec("jpeg", 12), DerivativeSpec("png", 6))))
    """
)


def _tar_members(fs, folder: str) -> list[str]:
    """`tar#member` for every member of the tars under `folder` (on `fs`)."""
    import tarfile

    members = []
    for key in fs.find(folder):
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(key))) as tf:
            members += [f"{key}#{m}" for m in tf.getnames()]
    return sorted(members)


# both layouts and both kinds of storage, each pair once: the layout decides what is written (images or one tar
# per shard), the storage how (atomic rename or one PUT); the other two pairs run killed too, by other means:
# local files by test_faults's Ctrl-C/SIGTERM test, S3 webdataset by test_chaos's node-loss test. Each run writes
# two derivatives besides the master, so the kill also lands between an input's outputs (issue 36: every input
# with all of its outputs, each exactly once; tests/test_derivatives_ray.py has the rest of the derivatives).
@pytest.mark.parametrize("where,layout", [("local", "webdataset"), ("s3", "files")])
def test_driver_sigkill_mid_run_then_rerun_is_exactly_once(ray_address, s3_env, tiny_ckpt, tmp_path, where, layout):
    """The driver SIGKILLed once its first shard is finished (its lock, spool and half-done shards left behind);
    the same command then takes the lock over, skips the finished shards and does exactly the rest, each input
    with its master and both derivatives once, and `verify` passes."""
    from fsspec.implementations.local import LocalFileSystem

    from raycolor.config import DerivativeSpec
    from raycolor.pipelines.verify import verify
    from tests.drivers import joining_env, sigkill_when, spawn

    n = 12
    if where == "s3":
        fs, bucket = s3_env.fs(), s3_env.bucket("sigkill")
        base, scheme = bucket, "s3://"
    else:
        fs, base, scheme = LocalFileSystem(auto_mkdir=True), str(tmp_path), ""
    for i in range(n):
        fs.pipe_file(f"{base}/in/{i:03d}.jpg", jpeg_bytes(100 + i))
    src, out = f"{scheme}{base}/in", f"{scheme}{base}/out"
    proc = spawn([sys.executable, "-c", KILLED_DRIVER, src, out, tiny_ckpt, layout], joining_env(ray_address), tmp_path / "logs")
    sigkill_when(proc, lambda: fs.exists(f"{base}/out/_stats") and bool(fs.ls(f"{base}/out/_stats", refresh=True)))
    time.sleep(1)
    done = sum(json.loads(fs.cat_file(p))["rows"] for p in fs.ls(f"{base}/out/_stats", refresh=True))
    assert 0 < done < n, "the kill must land mid-run for this test to mean anything"
    assert fs.exists(f"{base}/out/_lock.json")  # the dead driver's lock (same host, dead pid): taken over
    derivs = (DerivativeSpec("jpeg", 12), DerivativeSpec("png", 6))
    s = colorize(ColorizeConfig(inputs=(src,), output=out, checkpoint=tiny_ckpt, batch_size=4, shard_size=3, layout=layout,
                                derivatives=derivs))
    assert (s.inputs, s.ok, s.skipped, s.processed, s.predictions) == (n, n, done, n - done, n - done)
    rows = one_row_each(out, [f"{src}/{i:03d}.jpg" for i in range(n)])
    assert all([e["name"] for e in r["outputs"]] == ["master", "jpeg-12", "png-6"] for r in rows.values())
    listed = sorted(e["uri"] for r in rows.values() for e in r["outputs"])
    if layout == "files":
        assert sorted(r["output"] for r in rows.values()) == [f"{out}/images/{i:03d}.png" for i in range(n)]
        assert sorted(fs.find(f"{base}/out/images")) == [f"{base}/out/images/{i:03d}.png" for i in range(n)]
        on_disk = sorted(f"{scheme}{k}" for k in fs.find(f"{base}/out/images") + fs.find(f"{base}/out/derivatives"))
        assert on_disk == listed and len(listed) == 3 * n
    else:  # each tar's members: three outputs and one .json per input of its shard, once, each named by one row
        members = [f"{scheme}{m}" for m in _tar_members(fs, f"{base}/out/shards")]
        assert len(members) == len(set(members)) == 4 * n
        assert sorted(m for m in members if not m.endswith(".json")) == listed and len(listed) == 3 * n
        masters = sorted(r["output"] for r in rows.values())  # the master image of each input, one per row
        assert set(masters) <= set(members) and sorted(m.rsplit("#", 1)[1] for m in masters) == [f"{i:03d}.png" for i in range(n)]
    assert not fs.exists(f"{base}/out/_lock.json")
    assert not [p for p in fs.find(f"{base}/out") if p.endswith(".tmp")]
    assert len(fs.ls(f"{base}/out/manifest", refresh=True)) == s.shards == len(fs.ls(f"{base}/out/_stats", refresh=True))
    result = verify(out)
    assert result.ok and result.report.ok == 3 * n, result.report.as_dict()


def test_webdataset_layout_one_tar_per_shard(ray_local, tiny_ckpt, tmp_path):
    import tarfile

    src = tmp_path / "in"
    for i in range(7):
        write_image(src / ("sub" if i % 2 else "") / f"p.{i}.png", 50 + i, (20 + i, 16))
    (src / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    cfg = ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint=tiny_ckpt, shard_size=3, layout="webdataset")
    s = colorize(cfg)
    assert (s.inputs, s.ok, s.error) == (8, 7, 1)
    assert not (out / "images").exists()
    tars = sorted((out / "shards").glob("*.tar"))
    assert [t.stem for t in tars] == sorted(p.stem for p in (out / "manifest").iterdir()) and len(tars) == s.shards
    rows = one_row_each(out, [str(p) for p in src.rglob("*.png")])
    assert rows[str(src / "bad.png")]["output"] is None
    members = {}
    for t in tars:
        with tarfile.open(t) as tf:
            names = tf.getnames()
            assert all("." not in n.rsplit(".", 1)[0] for n in names)  # WebDataset keys hold no dots
            members.update({f"{t}#{n}": tf.extractfile(n).read() for n in names})
    for src_path, r in rows.items():
        if r["status"] != "ok":
            continue
        assert r["output"] in members, r["output"]
        meta = json.loads(members[r["output"].rsplit(".", 1)[0] + ".json"])
        assert meta["source"] == src_path and (meta["width"], meta["height"]) == (r["width"], r["height"])
        assert (_l(members[r["output"]]) - _l(Path(src_path).read_bytes())).abs().max() <= 1.0
    assert {r["output"].split("#", 1)[1] for r in rows.values() if r["output"]} == {
        f"{'sub/' if i % 2 else ''}p_{i}.png" for i in range(7)}
    # an unfinished shard (no stats record) is redone: its tar rewritten, still one row each
    victim = tars[0].stem
    (out / "_stats" / f"{victim}.json").unlink()
    again = colorize(cfg)
    assert 0 < again.processed <= 3
    assert again.shards_skipped == s.shards - 1 and again.ok == 7
    one_row_each(out, [str(p) for p in src.rglob("*.png")])
    assert sorted((out / "shards").glob("*.tar")) == tars

    # --retry-all-errors: bad.png, a real image by now, is redone; its shard's tar is rebuilt holding the
    # earlier members unchanged next to the new one; still one row each
    def members_of(tars):
        got = {}
        for t in tars:
            with tarfile.open(t) as tf:
                got.update({f"{t}#{n}": tf.extractfile(n).read() for n in tf.getnames()})
        return got

    before = members_of(tars)
    write_image(src / "bad.png", 99, (18, 14))
    retried = colorize(dataclasses.replace(cfg, retry_errors="all"))
    assert (retried.processed, retried.inputs, retried.ok, retried.error) == (1, 8, 8, 0)
    rows = one_row_each(out, [str(p) for p in src.rglob("*.png")])
    after = members_of(sorted((out / "shards").glob("*.tar")))
    assert len(after) == 2 * 8 and {k: after[k] for k in before} == before
    bad = rows[str(src / "bad.png")]
    assert bad["status"] == "ok" and bad["output"] in after
    assert json.loads(after[bad["output"].rsplit(".", 1)[0] + ".json"])["source"] == str(src / "bad.png")


def _listed(out: str) -> list[tuple[str, str]]:
    """(source, relpath) of every entry of the manifest shards `raycolor list` wrote, as colorize reads them."""
    from raycolor import inputs

    plan = inputs.list_folder(out)
    shards = [s for kind, uri, tag in plan.objects for s in inputs.size_object(kind, uri, tag, root=plan.root, shard_size=100)]
    return sorted((i.source, i.relpath) for s in shards for i in inputs.expand(s))


def test_list_command_in_tasks_gives_list_items_entries(ray_local, tmp_path):
    """Folder groups listed in Ray tasks, beyond the fan-out depth too: the same entries and relpaths as one
    listing of everything (inputs.list_items), collisions renamed alike, across roots and case-variant folders."""
    from raycolor import inputs

    scans, more = tmp_path / "scans", tmp_path / "more"
    names = ["a.jpg", "b.JPG", "b.png", "notes.txt", "sub/c.tif", "X/p.jpg", "x/p.png", "d1/d2/d3/deep.jpg",
             "d1/d2/d3/d4/deeper.png", "d1/D2/d3/deep.png"]
    for root, name in [(scans, n) for n in names] + [(more, "a.jpg"), (more, "sub/C.tif"), (more, "d1/d2/d3/deep.tif")]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    assert inputs.LIST_FANOUT_DEPTH < 3  # d1/d2/d3/... is listed below the fan-out depth
    for n, roots in enumerate([[scans, more, scans / "sub"], [scans / "d1", scans, more]]):
        out = tmp_path / f"lists{n}"
        out.mkdir()
        (out / "part-00009.parquet").write_bytes(b"stale")  # from an earlier listing in the same place
        args = ["list", *map(str, roots), "--output", str(out), "--shard-size", "3"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        want = sorted((i.source, i.relpath) for i in inputs.list_items([str(p) for p in roots]))
        assert _listed(str(out)) == want and len(want) == 12
        assert any("__" in rel for _, rel in want)  # collisions were renamed, the same way
        assert "part-00009.parquet" not in {p.name for p in out.iterdir()}
        stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        assert CliRunner().invoke(app, args).exit_code == 0
        # an unchanged folder: parts untouched, so colorize's shards (keyed by etag/mtime) are unchanged
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    r = CliRunner().invoke(app, ["list", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not found" in r.output
    r = CliRunner().invoke(app, ["list", str(scans / "a.jpg"), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "lists folders and prefixes" in r.output


def test_list_command_on_s3_prefixes(ray_local, s3_env):
    from raycolor import inputs

    fs = s3_env.fs()
    bucket = s3_env.bucket("lister")
    for key in ("in/a.jpg", "in/x/b.JPG", "in/x/y/c.png", "in/x/y/z/w/deep.png", "in/z/notes.txt", "in/x/b.png",
                "in2/X/b.jpg", "in2/q.png", "other/d.jpg"):
        fs.pipe_file(f"{bucket}/{key}", b"x")
    roots = [f"s3://{bucket}/in", f"s3://{bucket}/in2"]
    r = CliRunner().invoke(app, ["list", *roots, "--output", f"s3://{bucket}/lists", "--shard-size", "2"])
    assert r.exit_code == 0, r.output
    want = sorted((i.source, i.relpath) for i in inputs.list_items(roots))
    assert _listed(f"s3://{bucket}/lists") == want and len(want) == 7


def test_folder_plan_lists_in_tasks_bins_small_folders_and_cuts_big_ones(ray_local, tmp_path):
    """colorize's plan of a folder: the listing tasks write the chunks under OUTPUT/_listing/ themselves;
    30 small sub-folders are packed into chunks of at most --shard-size, one big sub-folder is cut by its
    own task; an unchanged folder plans the same shards and rewrites no chunk."""
    from raycolor import inputs
    from raycolor.outputs import ledger
    from raycolor.pipelines.planning import classify_inputs, plan

    src, out = tmp_path / "scans", tmp_path / "out"
    names = [f"box{b:02d}/{i}.jpg" for b in range(30) for i in range(3)] + [f"big/{i:03d}.jpg" for i in range(50)] + ["top.jpg"]
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    cfg = ColorizeConfig(inputs=(str(src),), output=str(out), checkpoint="unused", shard_size=20)
    def planned():
        with ledger.locked(str(out)) as book:
            return plan(cfg, str(out), classify_inputs(cfg.inputs), book)

    p = planned()
    shards = p.shards
    assert all(s.kind == "listing" and 0 < s.count <= 20 for s in shards), shards
    assert sum(s.count for s in shards) == len(names)
    items = {s.id: inputs.expand(s) for s in shards}
    assert sorted(i.source for v in items.values() for i in v) == sorted(str(src / n) for n in names)
    # the 50-image folder: chunks of its own (content-defined); the 31 small groups (30 boxes of 3, top.jpg):
    # packs of 10-20 images (a pack ends at least half full, or when the next folder would not fit), not 31
    big = [s for s in shards if all(i.relpath.startswith("big/") for i in items[s.id])]
    packs = [s.count for s in shards if s not in big]
    assert sum(s.count for s in big) == 50 and sum(packs) == 91
    assert len(packs) <= 10 and all(n >= 10 for n in sorted(packs)[1:]), packs
    chunks = {p.name: p.stat().st_mtime_ns for p in (out / "_listing").iterdir()}
    assert sorted(chunks) == sorted(f"{s.id}.parquet" for s in shards)
    again = planned()
    assert [s.id for s in again.shards] == [s.id for s in shards]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "_listing").iterdir()} == chunks


def test_a_planning_task_error_reaches_the_driver_as_itself(ray_local, tmp_path):
    """runtime.ray_get, the one unwrapping of a task's error: a non-UTF-8 .txt manifest is refused in its
    sizing task (inputs.txt_entries) and the driver sees the InputError, not a RayTaskError wrapper; the
    refs given to cancel are cancelled."""
    import ray

    from raycolor import inputs
    from raycolor.pipelines import planning

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ok.jpg\ncaf\u00e9.jpg\n".encode("latin-1"))
    with pytest.raises(inputs.InputError, match="not UTF-8 text") as raised:
        planning.shard_inputs([inputs.classify(str(bad))], shard_size=10, listing=str(tmp_path / "_listing" / "{id}.parquet"))
    # the task's own message, the CLI's one error line: not Ray's remote traceback around it
    assert str(raised.value) == f"bad manifest {bad}: not UTF-8 text (the line at byte 7)"
    assert not isinstance(raised.value, ray.exceptions.RayTaskError)
    # and chained to Ray's error, whose remote traceback says where in the task it failed (shown in full for a bug)
    assert isinstance(raised.value.__cause__, ray.exceptions.RayTaskError)
    assert "txt_entries" in str(raised.value.__cause__)

    def fails():
        raise inputs.InputError("bad manifest m.txt: not UTF-8 text")

    started = tmp_path / "sleeps-started"

    def sleeps():
        started.touch()
        time.sleep(1200)  # blocked in C, as a listing task in an object-store call: only a forced cancel ends it

    pending = ray.remote(num_cpus=0)(sleeps).remote()
    # running before ray_get cancels it: the case where a plain cancel is not enough (and was lost twice under load)
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the task to cancel never started"
    with pytest.raises(inputs.InputError, match="not UTF-8"):
        runtime.ray_get(ray.remote(max_retries=0)(fails).remote(), cancel=[pending])
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError)):
        ray.get(pending, timeout=60)
