"""raycolor.storage and raycolor.inputs (once one module, sources.py): listings (folders, tars, manifests),
range reads, sanitising, retries, atomic writes.

Local cases use tmp_path; S3 cases use a real moto server (see conftest.py), never mocks.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile

import pytest

from raycolor import inputs, storage
from raycolor.config import StorageConfig
from raycolor.inputs import InputError, Item, list_items
from raycolor.paths import output_key
from raycolor.storage import (
    exists,
    filesystem,
    join_uri,
    read_item,
    sanitize_relpath,
    write_bytes_atomic,
)


def _payload(name: str, n: int = 700) -> bytes:
    # distinct, deterministic, non-trivial bytes per name (not images: sources never decodes)
    out = b""
    block = name.encode()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:n]


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _make_tar(members: dict[str, bytes], *, extra=None) -> bytes:
    """An uncompressed tar with regular-file members (+ optional extra TarInfo objects)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or ():
            tar.addfile(info)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a/b/x.jpg", "a/b/x.jpg"),
        ("../evil.jpg", "evil.jpg"),
        ("../../../../etc/passwd", "etc/passwd"),
        ("a/../../b.jpg", "a/b.jpg"),  # '..' dropped, never resolved
        ("/abs.jpg", "abs.jpg"),
        ("//server/share/x.png", "server/share/x.png"),
        ("a\\b\\x.png", "a/b/x.png"),
        ("..\\..\\x.png", "x.png"),
        ("C:\\x", "x"),
        ("C:\\Users\\me\\..\\pic.jpg", "Users/me/pic.jpg"),
        ("C:x.jpg", "x.jpg"),
        ("c:/d:/x.jpg", "x.jpg"),
        ("./a/./b//c.jpg", "a/b/c.jpg"),
        ("dir/ha\x00lf\x1f\x7f.jpg", "dir/half.jpg"),
        (".\x00./x.jpg", "x.jpg"),  # control chars removed before '..' is recognised
        ("my photos/été 1950.jpg", "my photos/été 1950.jpg"),
        ("写真/猫.png", "写真/猫.png"),
        ("a/12:30.jpg", "a/12:30.jpg"),  # colon kept where it is not a drive
        ("", "unnamed"),
        ("..", "unnamed"),
        ("/", "unnamed"),
        ("\x00\x01", "unnamed"),
        ("bad\udcff.jpg", "bad\ufffd.jpg"),  # undecodable tar bytes (surrogateescape)
    ],
)
def test_sanitize_relpath_table(name, expected):
    got = sanitize_relpath(name)
    assert got == expected
    assert not got.startswith("/") and "\\" not in got
    assert ".." not in got.split("/") and "" not in got.split("/")
    assert sanitize_relpath(got) == got  # idempotent


NASTY = ["../x.png", "/etc/x.png", "..\\..\\x.png", "C:\\x.png", "a/../../../x.png", "", "..", "\x00/..", "ok/y.png"]


@pytest.mark.parametrize("base", ["/out/run", "/out/run/", "s3://bucket/out", "s3://bucket/out/", "s3://bucket", "rel/out"])
@pytest.mark.parametrize("key", NASTY)
def test_join_uri_stays_under_base(base, key):
    got = join_uri(base, "images", key)
    root = base.rstrip("/") + "/"
    assert got.startswith(root)
    rest = got[len(root) :]
    assert rest.startswith("images")
    assert ".." not in rest.split("/") and "" not in rest.split("/")
    assert os.path.normpath(os.path.join("/out/run", rest)).startswith("/out/run/images")


def test_join_uri_basics():
    assert join_uri("s3://b/out", "images", "a/x.png") == "s3://b/out/images/a/x.png"
    assert join_uri("s3://b/", "x.png") == "s3://b/x.png"
    assert join_uri("/", "x.png") == "/x.png"
    assert join_uri("/out", "") == "/out"


def test_output_key():
    assert output_key("a/b/x.JPG", ".png") == "a/b/x.png"
    assert output_key("x.jpeg", ".jpg") == "x.jpg"
    assert output_key("x.tar/dir/y.tif", "png") == "x.tar/dir/y.png"
    assert output_key("noext", ".png") == "noext.png"
    assert output_key("../a/.hidden", ".png") == "a/.hidden.png"
    assert output_key("a.b/c", ".png") == "a.b/c.png"


def test_storage_and_inputs_do_not_import_ray_or_torch():
    code = "import sys, raycolor.storage, raycolor.inputs; bad = {'ray', 'torch'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------
# Local
# ------------------------------------------------------------------------------------------


def test_local_folder_listing(tmp_path):
    root = tmp_path / "photos"
    files = {
        "a.jpg": _payload("a"),
        "B.JPEG": _payload("b"),
        "sub/c.Png": _payload("c"),
        "sub/deeper/d.webp": _payload("d"),
        "sub/e.TIFF": _payload("e"),
        "f.bmp": _payload("f"),
        "g.tif": _payload("g"),
    }
    for rel, data in files.items():
        _write(root / rel, data)
    for junk in ("notes.txt", "sub/readme.md", "h.svg", "sub/archive.tar", "jpg", "sub/.DS_Store"):
        _write(root / junk, b"junk")

    items = list_items([str(root)])
    assert [it.relpath for it in items] == sorted(files)
    for it in items:
        assert it.source == it.uri == str(root / it.relpath)
        assert (it.offset, it.size) == (0, -1)
        assert read_item(it) == files[it.relpath]

    # file:// and a trailing slash name the same folder; the same sources are dropped
    again = list_items([f"file://{root}/", str(root)])
    assert again == items

    single = list_items([str(root / "sub" / "c.Png")])
    assert single == [Item(source=str(root / "sub/c.Png"), relpath="c.Png", uri=str(root / "sub/c.Png"))]


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="input not found: .*nope"):
        list_items([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="no images found"):
        list_items([str(tmp_path / "empty")])
    (tmp_path / "x.svg").write_bytes(b"GIF")
    with pytest.raises(InputError, match="not an image"):
        list_items([str(tmp_path / "x.svg")])
    with pytest.raises(InputError, match="no inputs"):
        list_items([])
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match="tar"):
        list_items([str(tmp_path / "bad.tar")])
    with pytest.raises(InputError, match="unknown URI scheme|no filesystem"):
        list_items(["nosuchproto://x/y.jpg"])


def test_tar_listing_and_range_reads(tmp_path):
    members = {
        "dir/x.jpg": _payload("x", 1500),
        "dir/y.PNG": _payload("y", 512),  # exactly one block
        "z.webp": _payload("z", 1),
        "readme.txt": b"not an image",
        "l" * 150 + ".jpg": _payload("long", 3000),  # GNU long name header before the member
    }
    tar_path = tmp_path / "shard.tar"
    tar_path.write_bytes(_make_tar(members))

    items = list_items([str(tar_path)])
    images = [n for n in members if not n.endswith(".txt")]
    assert [it.relpath for it in items] == [f"shard.tar/{n}" for n in images]  # archive order
    for it, name in zip(items, images):
        assert it.source == f"{tar_path}#{name}"
        assert it.uri == str(tar_path)
        assert it.size == len(members[name])
        assert read_item(it) == members[name]
    assert not list(tmp_path.glob("shard.tar/*")) and sorted(os.listdir(tmp_path)) == ["shard.tar"]


def test_tar_hostile_members(tmp_path):
    good = _payload("good")
    link = tarfile.TarInfo("link.jpg")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    hard = tarfile.TarInfo("hard.jpg")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "../evil.jpg"
    dev = tarfile.TarInfo("dev.jpg")
    dev.type = tarfile.CHRTYPE
    folder = tarfile.TarInfo("folder.jpg")
    folder.type = tarfile.DIRTYPE
    data = _make_tar(
        {"../evil.jpg": _payload("evil"), "/abs.jpg": _payload("abs"), "a\\..\\..\\win.jpg": good},
        extra=[link, hard, dev, folder],
    )
    tar_path = tmp_path / "shard.tar"
    tar_path.write_bytes(data)
    items = list_items([str(tar_path)])
    assert [it.relpath for it in items] == ["shard.tar/evil.jpg", "shard.tar/abs.jpg", "shard.tar/a/win.jpg"]
    assert read_item(items[0]) == _payload("evil")
    assert read_item(items[1]) == _payload("abs")
    assert read_item(items[2]) == good
    assert sorted(os.listdir(tmp_path)) == ["shard.tar"]  # nothing extracted


def test_truncated_tar_member_is_a_read_error_not_a_retry(tmp_path, monkeypatch):
    data = _make_tar({"x.jpg": _payload("x", 5000)})
    tar_path = tmp_path / "t.tar"
    tar_path.write_bytes(data)
    (item,) = list_items([str(tar_path)])
    tar_path.write_bytes(data[: item.offset + 100])
    calls = []
    monkeypatch.setattr(storage.retry.time, "sleep", calls.append)
    with pytest.raises(OSError, match="short read"):
        read_item(item)
    assert calls == []


def test_read_item_retries_transient_errors_only(tmp_path, monkeypatch):
    (tmp_path / "x.jpg").write_bytes(b"pixels")
    (item,) = list_items([str(tmp_path / "x.jpg")])
    fs, _ = filesystem(item.uri)
    sleeps: list[float] = []
    monkeypatch.setattr(storage.retry.time, "sleep", sleeps.append)
    real = type(fs).cat_file
    failures = [ConnectionResetError(104, "Connection reset by peer"), TimeoutError("read timed out")]

    def flaky(self, path, *a, **kw):
        if failures:
            raise failures.pop(0)
        return real(self, path, *a, **kw)

    monkeypatch.setattr(type(fs), "cat_file", flaky)
    assert read_item(item, store=StorageConfig(retries=5)) == b"pixels"
    assert len(sleeps) == 2 and sleeps[1] >= sleeps[0] > 0

    failures[:] = [ConnectionResetError(104, "reset")] * 3
    with pytest.raises(ConnectionResetError):
        read_item(item, store=StorageConfig(retries=2))

    sleeps.clear()
    failures.clear()
    gone = Item(source="/nope/x.jpg", relpath="x.jpg", uri=str(tmp_path / "gone.jpg"))
    with pytest.raises(FileNotFoundError):
        read_item(gone)
    assert sleeps == []


@pytest.mark.parametrize(
    "exc, transient",
    [
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError(), True),
        (OSError(5, "Internal Server Error 500"), True),
        (FileNotFoundError("x"), False),
        (PermissionError("x"), False),
        (ValueError("bad"), False),
    ],
)
def test_is_transient(exc, transient):
    assert storage.is_transient(exc) is transient


def test_botocore_style_errors_are_classified():
    class ClientError(Exception):
        def __init__(self, status, code):
            super().__init__(code)
            self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}

    assert storage.is_transient(ClientError(503, "SlowDown"))
    assert storage.is_transient(ClientError(500, "InternalError"))
    assert not storage.is_transient(ClientError(403, "AccessDenied"))
    try:  # s3fs-style wrapping: OSError raised from the botocore error
        try:
            raise ClientError(503, "SlowDown")
        except ClientError as inner:
            raise OSError("wrapped") from inner
    except OSError as wrapped:
        assert storage.is_transient(wrapped)


def test_manifests(tmp_path):
    a, b = tmp_path / "imgs" / "a.jpg", tmp_path / "imgs" / "sub" / "b.png"
    _write(a, _payload("a"))
    _write(b, _payload("b"))
    txt = tmp_path / "list.txt"
    txt.write_text(
        f"# a comment\n\n{a}\n  imgs/sub/b.png  \nfile://{a}\ns3://some-bucket/p/q/c.jpg\r\n# end\n"
    )
    items = list_items([str(txt)])
    assert [(it.source, it.relpath) for it in items] == [
        (str(a), str(a).lstrip("/")),
        (str(b), "imgs/sub/b.png"),  # relative entry: resolved next to the manifest, relpath as written
        ("s3://some-bucket/p/q/c.jpg", "some-bucket/p/q/c.jpg"),  # the bucket, then its path (key rule 2)
    ]  # the file:// duplicate of a is dropped
    assert list_items([str(txt)], key_rule=1)[2].relpath == "p/q/c.jpg"  # rule 1 (older OUTPUTs): the bucket dropped
    assert read_item(items[1]) == _payload("b")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pqt = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [str(b), None, "", "s3://bkt/z.tif"], "other": [1, 2, 3, 4]}), pqt)
    items = list_items([str(pqt)])
    assert [(it.source, it.relpath) for it in items] == [(str(b), str(b).lstrip("/")), ("s3://bkt/z.tif", "bkt/z.tif")]

    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"path": ["x"]}), nocol)
    with pytest.raises(InputError, match="uri"):
        list_items([str(nocol)])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="empty manifest"):
        list_items([str(empty)])
    badproto = tmp_path / "badproto.txt"
    badproto.write_text("nosuchproto://x/y.jpg\n")
    with pytest.raises(InputError, match="line 1"):
        list_items([str(badproto)])


def test_manifest_makes_no_listing_calls(tmp_path, monkeypatch):
    txt = tmp_path / "list.txt"
    txt.write_text("".join(f"s3://bucket/huge/prefix/{i}.jpg\n" for i in range(1000)))
    fs, _ = filesystem(str(txt))

    def boom(*a, **kw):
        raise AssertionError("manifest must not list")

    for name in ("find", "ls", "walk", "glob", "exists"):
        monkeypatch.setattr(type(fs), name, boom)
    items = list_items([str(txt)])
    assert len(items) == 1000 and items[7].relpath == "bucket/huge/prefix/7.jpg"


def test_duplicates_and_collisions(tmp_path):
    for rel in ("x.jpg", "x.PNG", "sub/y.jpg"):
        _write(tmp_path / "one" / rel, _payload(rel))
    _write(tmp_path / "two" / "sub" / "y.jpg", _payload("other y"))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")

    items = list_items([one, two, one, str(tmp_path / "one" / "x.jpg")])
    assert len({it.source for it in items}) == len(items) == 4
    h = lambda src: hashlib.sha1(src.encode()).hexdigest()[:8]  # noqa: E731
    # first keeps its name; later ones get __<8 hex of sha1(source)> before the extension.
    # x.PNG and x.jpg would both become x.png; the two sub/y.jpg are different sources.
    assert [(it.source, it.relpath) for it in items] == [
        (f"{one}/sub/y.jpg", "sub/y.jpg"),
        (f"{one}/x.PNG", "x.PNG"),
        (f"{one}/x.jpg", f"x__{h(one + '/x.jpg')}.jpg"),
        (f"{two}/sub/y.jpg", f"sub/y__{h(two + '/sub/y.jpg')}.jpg"),
    ]
    assert len({output_key(it.relpath, ".png").lower() for it in items}) == 4
    assert list_items([one, two]) == items  # deterministic


def test_digest_is_the_one_name_hash():
    """storage.digest: sha1 hex of the UTF-8 text, also for undecodable local names (lone surrogates), and
    the collision suffix of dedupe is its first 8 digits."""
    from raycolor import paths

    name = "/scans/caf\udce9.jpg"  # os.fsdecode of a Latin-1 file name
    assert storage.digest(name) == hashlib.sha1(b"/scans/caf\xed\xb3\xa9.jpg").hexdigest()
    assert storage.digest(name, 8) == storage.digest(name)[:8] and len(storage.digest("x", 20)) == 20
    a, b = (inputs.Item(source=s, relpath="x.jpg", uri=s) for s in ("/a/x.jpg", name))
    assert [i.relpath for i in inputs.dedupe([a, b])] == ["x.jpg", f"x__{storage.digest(name, 8)}.jpg"]
    assert paths.root_id("/r") == storage.digest("root\x1f/r", 16)  # ids: the digest of parts joined by \x1f


# ------------------------------------------------------------------------------------------
# Writes
# ------------------------------------------------------------------------------------------


def test_write_bytes_atomic_local(tmp_path):
    target = tmp_path / "out" / "images" / "a" / "x.png"
    write_bytes_atomic(str(target), b"first")
    assert target.read_bytes() == b"first"
    write_bytes_atomic(f"file://{target}", b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert sorted(os.listdir(target.parent)) == ["x.png"]  # no temp files left
    assert exists(str(target)) and not exists(str(target.parent / "y.png"))
    mode = target.stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def test_write_bytes_atomic_local_failure_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise PermissionError("nope")

    monkeypatch.setattr(storage.files.os, "replace", fail)
    with pytest.raises(PermissionError):
        write_bytes_atomic(str(target), b"new")
    assert sorted(os.listdir(tmp_path)) == ["x.png"] and target.read_bytes() == b"old"


def test_write_bytes_atomic_temp_file_in_tmp_dir_or_beside_across_mounts(tmp_path, monkeypatch):
    import errno

    target, spool = tmp_path / "images" / "x.png", tmp_path / "_spool" / "s1"
    real, seen = os.replace, []

    def replace(src, dst):
        seen.append(os.path.dirname(src))
        if os.path.dirname(src) == str(spool) and len(seen) > 1:  # the second write: spool on another mount
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(storage.files.os, "replace", replace)
    write_bytes_atomic(str(target), b"one", tmp_dir=str(spool))
    assert seen == [str(spool)] and target.read_bytes() == b"one"
    write_bytes_atomic(str(target), b"two", tmp_dir=str(spool))
    assert seen[1:] == [str(spool), str(target.parent)] and target.read_bytes() == b"two"
    assert os.listdir(spool) == [] and os.listdir(target.parent) == ["x.png"]


def _umask() -> int:
    out = subprocess.run(["sh", "-c", "umask"], capture_output=True, text=True, check=True).stdout
    return int(out.strip(), 8)


# ------------------------------------------------------------------------------------------
# S3 (moto server)
# ------------------------------------------------------------------------------------------


def test_s3_prefix_listing_read_write_exists(s3_env):
    bucket = s3_env.bucket("photos")
    fs = s3_env.fs()
    files = {"in/a.jpg": _payload("a"), "in/sub/B.JPG": _payload("b"), "in/sub/c.tiff": _payload("c")}
    for key, data in files.items():
        fs.pipe_file(f"{bucket}/{key}", data)
    fs.pipe_file(f"{bucket}/in/notes.txt", b"x")
    fs.pipe_file(f"{bucket}/inbox/decoy.jpg", b"not under in/")

    items = list_items([f"s3://{bucket}/in"])
    assert [it.relpath for it in items] == ["a.jpg", "sub/B.JPG", "sub/c.tiff"]
    for it in items:
        assert it.source == it.uri == f"s3://{bucket}/in/{it.relpath}"
        assert read_item(it) == files[f"in/{it.relpath}"]
    assert list_items([f"s3://{bucket}/in/"]) == items
    assert [it.relpath for it in list_items([f"s3://{bucket}/in/sub/c.tiff"])] == ["c.tiff"]

    # explicit endpoint argument overrides the environment
    assert list_items([f"s3://{bucket}/in"], store=StorageConfig(s3_endpoint=s3_env.endpoint)) == items

    out = join_uri(f"s3://{bucket}/out", "images", output_key("../sub/B.JPG", ".png"))
    assert out == f"s3://{bucket}/out/images/sub/B.png"
    assert not exists(out)
    write_bytes_atomic(out, b"png-1")
    assert exists(out)
    write_bytes_atomic(out, b"png-2")
    assert s3_env.fs().cat_file(f"{bucket}/out/images/sub/B.png") == b"png-2"
    assert read_item(Item(source=out, relpath="B.png", uri=out)) == b"png-2"

    with pytest.raises(InputError, match=f"input not found: s3://{bucket}/missing"):
        list_items([f"s3://{bucket}/missing"])
    with pytest.raises(InputError, match="input not found"):
        list_items([f"s3://{s3_env.bucket('x')}-nonexistent/p"])
    with pytest.raises(FileNotFoundError):
        read_item(Item(source="s", relpath="s.jpg", uri=f"s3://{bucket}/nope.jpg"), store=StorageConfig(retries=2))
    # messages are one line and never show userinfo credentials
    with pytest.raises(InputError) as err:
        list_items([f"s3://AKIDSECRET:hunter2@{bucket}/x.jpg"])
    assert "hunter2" not in str(err.value) and "AKIDSECRET" not in str(err.value)
    assert "\n" not in str(err.value)


def test_s3_tar_and_manifest(s3_env):
    bucket = s3_env.bucket("shards")
    fs = s3_env.fs()
    members = {"dir/x.jpg": _payload("x", 4000), "../evil.jpg": _payload("e"), "y.png": _payload("y", 10)}
    fs.pipe_file(f"{bucket}/shards/shard-0.tar", _make_tar(members))
    fs.pipe_file(f"{bucket}/loose/z.jpg", _payload("z"))

    items = list_items([f"s3://{bucket}/shards/shard-0.tar"])
    assert [it.relpath for it in items] == ["shard-0.tar/dir/x.jpg", "shard-0.tar/evil.jpg", "shard-0.tar/y.png"]
    assert items[0].source == f"s3://{bucket}/shards/shard-0.tar#dir/x.jpg"
    for it, name in zip(items, members):
        assert it.uri == f"s3://{bucket}/shards/shard-0.tar"
        assert read_item(it) == members[name]

    fs.pipe_file(
        f"{bucket}/lists/m.txt",
        f"s3://{bucket}/loose/z.jpg\n../loose/z.jpg\nrel/w.jpg\n".encode(),
    )
    m = list_items([f"s3://{bucket}/lists/m.txt"])
    # relative entries resolve next to the manifest: "../loose/z.jpg" is the same source as the
    # first line (dropped); no existence check is made for rel/w.jpg (a manifest is trusted)
    assert [(it.source, it.relpath) for it in m] == [
        (f"s3://{bucket}/loose/z.jpg", f"{bucket}/loose/z.jpg"),  # the bucket, then the path (key rule 2)
        (f"s3://{bucket}/lists/rel/w.jpg", "rel/w.jpg"),  # a relative entry keeps its text
    ]
    assert read_item(m[0]) == _payload("z")


# ------------------------------------------------------------------------------------------
# Concurrent reads and writes (read_items / write_many)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(storage.retry, "_BACKOFF_BASE_S", 0.01)


@pytest.mark.parametrize("io_concurrency", [1, 4, 64])
def test_read_items_local_order_errors_and_tar_ranges(tmp_path, io_concurrency):
    names = [f"d/{i:02d}.jpg" for i in range(12)]
    for name in names:
        _write(tmp_path / name, _payload(name, 300 + 37 * len(name)))
    members = {"m/x.jpg": _payload("mx", 3000), "m/y.png": _payload("my", 5)}
    (tmp_path / "t.tar").write_bytes(_make_tar(members))
    items = list_items([str(tmp_path / "d"), str(tmp_path / "t.tar")])
    gone = Item(source="gone", relpath="gone.jpg", uri=str(tmp_path / "gone.jpg"))
    items = items[:5] + [gone] + items[5:]

    got = storage.read_items(items, store=StorageConfig(retries=2, io_concurrency=io_concurrency))
    assert len(got) == len(items)
    expected = [_payload(n, 300 + 37 * len(n)) for n in names[:5]] + [None]
    expected += [_payload(n, 300 + 37 * len(n)) for n in names[5:]] + list(members.values())
    for item, data, want in zip(items, got, expected):
        if want is None:
            assert isinstance(data, FileNotFoundError), data
        else:
            assert data == want, item.source
    assert storage.read_items([], store=StorageConfig(io_concurrency=io_concurrency)) == []


@pytest.mark.parametrize("io_concurrency", [1, 8])
def test_write_many_local_atomic_order_and_failures(tmp_path, io_concurrency):
    (tmp_path / "blocker").write_bytes(b"a file, so nothing can be written below it")
    pairs = [(str(tmp_path / "out" / f"sub{i % 3}" / f"{i}.png"), _payload(str(i))) for i in range(10)]
    pairs.insert(4, (str(tmp_path / "blocker" / "x.png"), b"cannot"))
    (tmp_path / "out" / "sub1").mkdir(parents=True)
    (tmp_path / "out" / "sub1" / "1.png").write_bytes(b"old content is replaced")

    result = storage.write_many(pairs, store=StorageConfig(retries=2, io_concurrency=io_concurrency))
    assert len(result) == len(pairs)
    assert isinstance(result[4], OSError) and not storage.is_transient(result[4])
    assert [r is None for r in result] == [i != 4 for i in range(len(pairs))]
    for (uri, data), r in zip(pairs, result):
        if r is None:
            with open(uri, "rb") as f:
                assert f.read() == data
    leftovers = [n for _, _, fs_ in os.walk(tmp_path) for n in fs_ if n.endswith(".tmp")]
    assert leftovers == []  # every write was temp + rename, nothing left behind
    assert storage.write_many([], store=StorageConfig(io_concurrency=io_concurrency)) == []


def test_read_items_and_write_many_s3_concurrent_bounded_and_retried(s3_env, fast_backoff):
    from tests.faultproxy import FaultProxy, combine, first_n

    bucket = s3_env.bucket("concurrent")
    fs = s3_env.fs()
    n = 16
    data = {f"in/{i:02d}.jpg": _payload(f"s3-{i}", 500 + i) for i in range(n)}
    for key, value in data.items():
        fs.pipe_file(f"{bucket}/{key}", value)
    members = {"a.jpg": _payload("ta", 2000), "b.jpg": _payload("tb", 40)}
    fs.pipe_file(f"{bucket}/shard.tar", _make_tar(members))
    items = list_items([f"s3://{bucket}/in", f"s3://{bucket}/shard.tar"])
    missing = Item(source="m", relpath="m.jpg", uri=f"s3://{bucket}/in/missing.jpg")
    items.insert(3, missing)
    expected = list(data.values())[:3] + [None] + list(data.values())[3:] + list(members.values())

    # BOTO: botocore's own attempts per call of ours (storage.filesystem sets max_attempts=3). Keys failing
    # that many times in a row get through only by our per-item retry; the others' single faults by either.
    BOTO = 3
    hard_get, hard_put = f"/{bucket}/in/05.jpg", f"/{bucket}/out/7.png"
    policy = combine(
        first_n(BOTO, "slowdown", where=lambda m, k: (m, k) == ("GET", hard_get)),
        first_n(BOTO, "slowdown", where=lambda m, k: (m, k) == ("PUT", hard_put)),
        first_n(1, "slowdown", where=lambda m, k: m == "GET" and k.startswith(f"/{bucket}/in/0")),
        first_n(1, "reset", where=lambda m, k: m == "PUT" and k.startswith(f"/{bucket}/out/")),
    )
    with FaultProxy(s3_env.endpoint, policy, latency_s=0.05) as proxy:
        store = StorageConfig(s3_endpoint=proxy.url, retries=3, io_concurrency=8)
        got = storage.read_items(items, store=store)
        assert 1 < proxy.peak_in_flight <= 8  # concurrent, and never more than asked for
        assert len(got) == len(items)
        for item, data_i, want in zip(items, got, expected):
            if want is None:
                assert isinstance(data_i, FileNotFoundError), data_i
            else:
                assert data_i == want, (item.source, data_i)
        outcomes = lambda method, key: [o for m, k, o in proxy.log if (m, k) == (method, key)]  # noqa: E731
        assert outcomes("GET", hard_get) == ["slowdown"] * BOTO + ["forwarded"]
        assert outcomes("GET", f"/{bucket}/in/missing.jpg") == ["forwarded"]  # permanent: asked once
        assert proxy.counts["slowdown"] == 10 + BOTO - 1  # in/00..09 once each, 05 BOTO times

        pairs = [(f"s3://{bucket}/out/{i}.png", _payload(f"o{i}")) for i in range(n)]
        no_bucket = f"{s3_env.bucket('x')}-nonexistent"
        pairs.insert(2, (f"s3://{no_bucket}/out/x.png", b"no bucket"))
        proxy.peak_in_flight = 0
        result = storage.write_many(pairs, store=store)
        assert 1 < proxy.peak_in_flight <= 8
        assert outcomes("PUT", hard_put) == ["slowdown"] * BOTO + ["forwarded"]
        assert outcomes("PUT", f"/{no_bucket}/out/x.png") == ["forwarded"]
    assert len(result) == len(pairs) and isinstance(result[2], FileNotFoundError), result[2]
    assert [r is None for r in result] == [i != 2 for i in range(len(pairs))]
    assert proxy.counts["reset"] == n - 1  # every image PUT once, but 7.png (slowed down instead)
    for (uri, value), r in zip(pairs, result):
        if r is None:
            assert fs.cat_file(uri[len("s3://"):]) == value


def test_concurrency_hides_latency(s3_env):
    """With latency added per request, n reads one at a time take >= n x latency; in flight together, a
    few rounds of it."""
    import time

    from tests.faultproxy import FaultProxy

    bucket = s3_env.bucket("latency")
    fs = s3_env.fs()
    n, latency = 16, 0.25
    for i in range(n):
        fs.pipe_file(f"{bucket}/in/{i}.jpg", _payload(str(i)))
    items = list_items([f"s3://{bucket}/in"])
    with FaultProxy(s3_env.endpoint, latency_s=latency) as proxy:
        storage.read_items(items[:1], store=StorageConfig(s3_endpoint=proxy.url))  # connect once, outside the timings
        t0 = time.perf_counter()
        one_at_a_time = storage.read_items(items, store=StorageConfig(s3_endpoint=proxy.url, io_concurrency=1))
        sequential_s = time.perf_counter() - t0
        assert proxy.peak_in_flight == 1
        t0 = time.perf_counter()
        together = storage.read_items(items, store=StorageConfig(s3_endpoint=proxy.url, io_concurrency=n))
        concurrent_s = time.perf_counter() - t0
        # many at once (not all 16: on a loaded CI box the pool's threads start over more than one latency)
        assert proxy.peak_in_flight > n // 4
    assert one_at_a_time == together == [_payload(it.relpath[:-4]) for it in items]
    assert sequential_s >= n * latency
    # one round of latency plus the S3 server's own time per request (tens of ms on a loaded machine)
    assert concurrent_s < sequential_s / 2, (sequential_s, concurrent_s)


def test_absolute_makes_local_outputs_usable_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.absolute("out/") == str(tmp_path / "out")
    assert storage.absolute(" file://rel/x ") == str(tmp_path / "rel" / "x")
    assert storage.absolute("~/runs") == str(tmp_path / "home" / "runs")
    assert storage.absolute("s3://bucket/prefix//") == "s3://bucket/prefix"


# ------------------------------------------------------------------------------------------
# Not taken: a listing counts what it leaves out, by suffix (never a silent skip)
# ------------------------------------------------------------------------------------------


def _archive_folder(root) -> dict[str, int]:
    """A folder as archives deliver them: scans beside PDFs, XML, a kind of image raycolor does not read, a
    tar and a manifest (in a folder of images: not expanded), names without a suffix. Returns what is not taken."""
    for rel in ("a.jpg", "box1/b.JPG", "box1/f1/c.png", "box2/d.tif"):
        _write(root / rel, _payload(rel))
    for rel in ("a.pdf", "box1/b.PDF", "box1/f1/c.pdf", "box2/d.Pdf", "box1/mets.xml", "box2/alto.XML",
                "box2/f2/scan.psd", "box1/batch.tar", "box1/list.txt", "README", "box2/.DS_Store"):
        _write(root / rel, b"not taken")
    return {".pdf": 4, ".xml": 2, "(none)": 2, ".psd": 1, ".tar": 1, ".txt": 1}


def test_folder_listing_counts_what_it_does_not_take_by_suffix(tmp_path):
    """Listing tasks' counts (inputs.list_group, run here without Ray): one recursive listing, or the first level
    fanned out and each sub-folder's subtree listed by its own task, count the same files, per root."""
    assert ".psd" not in inputs.IMAGE_SUFFIXES and ".pdf" not in inputs.IMAGE_SUFFIXES
    root = str(tmp_path / "in")
    want = _archive_folder(tmp_path / "in")
    chunks = str(tmp_path / "c-{id}.parquet")
    top = inputs.ListGroup(key="", dirs=((root, root),), exclude=(root,))
    (_, _, found, _, not_taken), _ = inputs.list_group(top, chunk_uri=chunks, shard_size=100, fan_out=False)
    assert found == {root: 4} and not_taken == {root: want}
    assert list(not_taken[root]) == [".pdf", "(none)", ".xml", ".psd", ".tar", ".txt"]  # largest first, ties by name

    (_, nxt, _, _, first), _ = inputs.list_group(top, chunk_uri=chunks, shard_size=100, fan_out=True)
    assert first == {root: {"(none)": 1, ".pdf": 1}}  # README and a.pdf: the first level only
    below = [inputs.list_group(g, chunk_uri=chunks, shard_size=100, fan_out=False)[0][4] for g in nxt]
    assert inputs.merge_not_taken(*(c[root] for c in [first, *below] if root in c)) == want

    plan = inputs.list_folder(root)  # the driver's one-listing path (a folder given to list_folder) counts alike
    assert plan.kind == "listing" and dict(plan.not_taken) == want


def test_a_root_inside_another_is_counted_once(tmp_path):
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    for p, data in ((outer / "a.jpg", b"x"), (outer / "a.xml", b"x"), (inner / "b.jpg", b"x"), (inner / "b.pdf", b"x"),
                    (inner / "deep" / "c.pdf", b"x")):
        _write(p, data)
    group = inputs.ListGroup(key="", dirs=((str(outer), str(outer)), (str(inner), str(inner))), exclude=(str(outer), str(inner)))
    (_, _, _, _, not_taken), _ = inputs.list_group(group, chunk_uri=str(tmp_path / "c-{id}.parquet"), shard_size=100,
                                                   fan_out=False)
    assert not_taken == {str(outer): {".xml": 1}, str(inner): {".pdf": 2}}


def test_a_folder_of_a_kind_raycolor_does_not_read_names_that_kind(tmp_path):
    reads = f"(it reads {', '.join(sorted(inputs.IMAGE_SUFFIXES))})"
    assert not {".psd", ".heic"} & inputs.IMAGE_SUFFIXES
    psd = tmp_path / "psd"
    for name in ("a.psd", "b.PSD", "sub/c.psd", "sub/d.heic"):
        _write(psd / name, b"8BPS")
    want = f"no images found under {psd}: 3 .psd files and 1 .heic file are not a kind raycolor reads {reads}"
    for listing in (lambda: list_items([str(psd)]), lambda: inputs.list_folder(str(psd))):
        with pytest.raises(InputError) as err:
            listing()
        assert str(err.value) == want
    _write(tmp_path / "one" / "x.heic", b"x")
    with pytest.raises(InputError, match=r"under .*one: 1 \.heic file is not a kind raycolor reads \(it reads "):
        inputs.list_folder(str(tmp_path / "one"))
    many = tmp_path / "many"
    for k, ext in enumerate((".a", ".b", ".c", ".d", ".e", ".f", ".g")):
        for n in range(k + 1):
            _write(many / f"{n}{ext}", b"x")
    _write(many / "NOTES", b"x")
    with pytest.raises(InputError, match=r": 7 \.g files, 6 \.f files, 5 \.e files, 4 \.d files, 3 \.c files and 4 more "
                                         r"files are not a kind raycolor reads"):
        inputs.list_folder(str(many))


def test_tar_members_not_taken_are_counted_by_the_same_header_walk(tmp_path):
    link = tarfile.TarInfo("link.jpg")
    link.type = tarfile.SYMTYPE
    link.linkname = "x.jpg"
    folder = tarfile.TarInfo("pages")
    folder.type = tarfile.DIRTYPE
    tar = tmp_path / "batch.tar"
    tar.write_bytes(_make_tar({"x.jpg": _payload("x"), "pages/1.pdf": b"%PDF", "pages/2.PDF": b"%PDF", "mets.xml": b"<x/>",
                               "MANIFEST": b"m"}, extra=[link, folder]))
    items, not_taken = inputs.tar_members(str(tar))
    assert [i.relpath for i in items] == ["batch.tar/x.jpg"]
    assert not_taken == {".pdf": 2, "(none)": 1, ".jpg": 1, ".xml": 1}  # the link is not taken either; the folder is no file
    shards, counted = inputs.size_and_count("tar", str(tar), "t", root=str(tar), shard_size=10)
    assert counted == not_taken and [s.count for s in shards] == [1]
    assert inputs.size_object("tar", str(tar), "t", root=str(tar), shard_size=10) == shards
    assert inputs.size_and_count("txt", str(_manifest(tmp_path)), "t", root="r", shard_size=10)[1] == {}  # entries as given
    docs = tmp_path / "docs.tar"
    docs.write_bytes(_make_tar({"a.pdf": b"%PDF", "b.pdf": b"%PDF"}))
    with pytest.raises(InputError, match=r"no image members in tar archive .*docs\.tar: 2 \.pdf files are not a kind "):
        inputs.tar_members(str(docs))


def _manifest(tmp_path):
    m = tmp_path / "m.txt"
    m.write_text("a.jpg\nb.pdf\n")
    return m


def test_glob_and_folder_of_manifests_count_what_is_not_an_object(tmp_path):
    d = tmp_path / "lists"
    for name in ("a.tar", "b.txt", "notes.pdf", "_SUCCESS"):
        _write(d / name, _make_tar({"x.jpg": b"x"}) if name.endswith(".tar") else b"x")
    (d / "sub").mkdir()
    glob = inputs.classify(str(d / "*"))
    assert [os.path.basename(u) for _, u, _ in glob.objects] == ["a.tar", "b.txt"]
    assert dict(glob.not_taken) == {"(none)": 1, ".pdf": 1}  # the folder matched is not a file
    plan = inputs.list_folder(str(d))
    assert plan.kind == "objects" and dict(plan.not_taken) == {"(none)": 1, ".pdf": 1}


def test_not_taken_counts_stay_a_small_dict_and_keep_their_sum():
    counts = {f".x{i:02d}": i + 1 for i in range(40)}
    merged = inputs.merge_not_taken(counts, {".x39": 1, ".none": 0})
    assert len(merged) == 32 and sum(merged.values()) == sum(counts.values()) + 1
    assert list(merged)[:2] == [".x39", ".x38"] and merged[".x39"] == 41 and ".none" not in merged
    assert list(merged)[-1] == "(other)" and merged["(other)"] == sum(range(1, 10))  # the nine rarest, folded, last
    assert inputs.merge_not_taken(merged, merged)["(other)"] == 2 * merged["(other)"]
    assert inputs.not_taken_key("a/B.PDF") == ".pdf" and inputs.not_taken_key("a/README") == "(none)"
