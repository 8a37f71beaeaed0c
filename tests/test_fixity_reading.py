"""The one reading loop hashes what it reads (inputs.read_decoded's `sha256`, the manifest's source_sha256): the
bytes of each item as read, a tar member's by its range read, an undecodable item's too; none for a failed read."""

from __future__ import annotations

import hashlib

from support import encoded, noise, write_tar

from raycolor import inputs


def test_read_decoded_hashes_every_item_read(tmp_path):
    good = encoded(noise(20, 10, 1), "PNG")
    (tmp_path / "a.png").write_bytes(good)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    member = encoded(noise(8, 6, 2), "PNG")
    tar = write_tar(tmp_path / "t.tar", {"m.png": member})
    [tar_item] = inputs.list_tar(str(tar))
    items = [inputs.Item(source=str(tmp_path / n), relpath=n, uri=str(tmp_path / n)) for n in ("a.png", "bad.png", "gone.png")]
    got = list(inputs.read_decoded([*items, tar_item]))
    assert got[0].rgb is not None and got[0].sha256 == hashlib.sha256(good).hexdigest()
    assert got[1].error and got[1].sha256 == hashlib.sha256(b"not an image at all").hexdigest()
    assert got[2].error.startswith("read_failed") and got[2].sha256 is None
    assert got[3].rgb is not None and got[3].sha256 == hashlib.sha256(member).hexdigest()
