"""Every storage call that retries follows StorageConfig.retries (`--retries`), never a number of its own
(issue 38, 5): through the fault proxy in front of the moto S3 server, each call site's request fails as often
as botocore tries it once (so our retrying sees exactly one failed attempt); `retries=1` (one attempt) must
then fail, `retries=2` must pass. A site still retrying a fixed 3 times would pass with retries=1.

StorageConfig.retries counts attempts in all (raycolor/config.py), so "fails K times" needs K+1."""

from __future__ import annotations

import json

import pytest

from raycolor import inputs, storage
from raycolor.config import StorageConfig
from raycolor.inputs import listing, shards
from raycolor.outputs import ledger
from tests.faultproxy import FaultProxy, first_n

# botocore's own attempts per request (raycolor.storage.uris.filesystem: max_attempts 3 retries, so 4 tries): the proxy fails that
# many (S3's 503 SlowDown: a reset connection is tried again by aiohttp as well, a count that depends on its
# version), so one of our attempts fails as a whole
BOTO = 4


@pytest.fixture
def fast_backoff(monkeypatch):
    """Our backoff and botocore's (a throttle waits up to 2^n s: ~7 s a site) shrunk to 10 ms; the counts of
    attempts, which are what this file checks, unchanged."""
    import aiobotocore.retries.standard
    import botocore.retries.standard

    monkeypatch.setattr(storage.retry, "_BACKOFF_BASE_S", 0.01)
    for module in (botocore.retries.standard, aiobotocore.retries.standard):
        monkeypatch.setattr(module.ExponentialBackoff, "delay_amount", lambda self, context: 0.01)


def _put(fs, bucket: str) -> None:
    fs.pipe_file(f"{bucket}/one.jpg", b"\xff\xd8 not decoded here")
    fs.pipe_file(f"{bucket}/folder/a.jpg", b"\xff\xd8 a")
    fs.pipe_file(f"{bucket}/one.tar", b"\0" * 1024)
    fs.pipe_file(f"{bucket}/objs/list.txt", f"s3://{bucket}/one.jpg\n".encode())
    fs.pipe_file(f"{bucket}/out/_stats/s1.json", json.dumps({"rows": 1}).encode())
    fs.pipe_file(f"{bucket}/out/_roots/r.json", json.dumps({"root": "s3://x/in", "shards": []}).encode())


# (name, the faulted request as (method, key path), the call): one per call site
SITES = [
    ("listing: an input's info", ("HEAD", "/{b}/one.jpg"), lambda b, st: inputs.list_items([f"s3://{b}/one.jpg"], store=st)),
    ("listing: a folder's find", ("GET", "/{b}"),
     lambda b, st: listing._list_folder(*storage.filesystem(f"s3://{b}/folder", store=st), f"s3://{b}/folder", store=st)),
    ("shards: classify's info", ("HEAD", "/{b}/one.tar"), lambda b, st: shards.classify(f"s3://{b}/one.tar", store=st)),
    ("shards: find_files", ("GET", "/{b}"), lambda b, st: shards.find_files(f"s3://{b}/folder", store=st)),
    ("shards: a listed object's info", ("HEAD", "/{b}/objs/list.txt"), lambda b, st: shards.list_folder(f"s3://{b}/objs", store=st)),
    ("shards: sizing a .txt manifest", ("GET", "/{b}/objs/list.txt"),
     lambda b, st: shards.size_object("txt", f"s3://{b}/objs/list.txt", "t", root=f"s3://{b}/objs", shard_size=10, store=st)),
    ("storage: exists", ("HEAD", "/{b}/one.jpg"), lambda b, st: storage.exists(f"s3://{b}/one.jpg", store=st)),
    ("ledger: a folder's listing", ("GET", "/{b}"), lambda b, st: ledger.finished_shards(f"s3://{b}/out", store=st)),
    ("ledger: stats records", ("GET", "/{b}/out/_stats/s1.json"), lambda b, st: ledger.read_stats(f"s3://{b}/out", ["s1"], store=st)),
    ("ledger: roots records", ("GET", "/{b}/out/_roots/r.json"), lambda b, st: ledger.read_roots(f"s3://{b}/out", store=st)),
]


@pytest.mark.parametrize("name, request_, call", SITES, ids=[s[0] for s in SITES])
def test_a_storage_call_retries_as_often_as_the_config_says(s3_env, fast_backoff, name, request_, call):
    bucket = s3_env.bucket("retries")
    _put(s3_env.fs(), bucket)
    method, path = request_[0], request_[1].format(b=bucket)
    want = call(bucket, StorageConfig(s3_endpoint=s3_env.endpoint))  # the answer without faults
    for retries, passes in ((1, False), (2, True)):
        with FaultProxy(s3_env.endpoint, first_n(BOTO, where=lambda m, k: (m, k) == (method, path))) as proxy:
            store = StorageConfig(s3_endpoint=proxy.url, retries=retries)
            if passes:
                assert call(bucket, store) == want, name
            else:
                with pytest.raises(Exception):  # noqa: B017 - each site raises its own kind (InputError, OSError)
                    call(bucket, store)
            assert proxy.faults == BOTO, (name, retries, proxy.log)  # the faulted request was the one made
