"""Credentials are never stored: a presigned URL's query is read but not kept (manifest rows, output keys, error
text), and an S3 endpoint carrying a secret is refused before it could reach Ray's runtime environment (which
`ray job list` and the dashboard show). Ray-free; the end-to-end run is in tests/test_hostile_run.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from raycolor import storage
from raycolor.cli import app
from raycolor.config import StorageConfig
from raycolor.pipelines import runtime

SIG = "f3a9c0ffee5eedbadc0de0123456789abcdef"
CRED = "AKIAFAKEKEYID7Q%2F20261207%2Fus-east-1%2Fs3%2Faws4_request"
PRESIGNED = (f"https://bucket.s3.amazonaws.com/p/x.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CRED}"
             f"&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={SIG}")


def _clean(text: str) -> bool:
    return SIG not in text and "AKIAFAKEKEYID7Q" not in text


def test_a_presigned_url_is_stored_without_its_query():
    assert storage.stored_uri(PRESIGNED) == "https://bucket.s3.amazonaws.com/p/x.jpg"
    # an s3:// query holding a credential-like parameter goes too; a plain "?" in an object key or a file name stays
    assert storage.stored_uri(f"s3://b/x.jpg?X-Amz-Signature={SIG}") == "s3://b/x.jpg"
    assert storage.stored_uri("s3://b/odd?name.jpg") == "s3://b/odd?name.jpg"
    assert storage.stored_uri("/scans/odd?name.jpg") == "/scans/odd?name.jpg"
    # a tar member's fragment survives
    assert storage.stored_uri(f"https://h/a.tar?sig={SIG}#m/x.png") == "https://h/a.tar#m/x.png"


@pytest.mark.parametrize("text", [
    f"GET {PRESIGNED} failed: 403 Forbidden",
    f"Client error for url: {PRESIGNED.split('://', 1)[1]}",  # a library echoing the URL without its scheme
    f"SignatureDoesNotMatch: X-Amz-Signature={SIG} X-Amz-Credential={CRED}",  # or only its parameters
])
def test_error_text_never_holds_the_signature(text):
    out = storage.redact(text, PRESIGNED)
    assert _clean(out), out
    assert "bucket.s3.amazonaws.com" in out or "SignatureDoesNotMatch" in out  # still says what failed


@pytest.mark.parametrize("endpoint", ["http://AKIAFAKEKEYID7Q:s3cr3tZ@127.0.0.1:9000",
                                      "https://token123secret@minio.example:443",
                                      "http://127.0.0.1:9000/?X-Amz-Security-Token=s3cr3tZ"])
def test_an_endpoint_with_a_secret_is_refused_everywhere(endpoint, monkeypatch):
    store = StorageConfig(s3_endpoint=endpoint)
    with pytest.raises(storage.InputError) as e:
        storage.filesystem("s3://b/x.jpg", store=store)
    assert "s3cr3tZ" not in str(e.value) and "token123secret" not in str(e.value)
    with pytest.raises(storage.InputError) as e:  # before Ray is imported, let alone given a runtime environment
        runtime.connect(None, store=store)
    assert "s3cr3tZ" not in str(e.value) and "token123secret" not in str(e.value)
    # the CLI: a usage error, one line, exit 2, no secret
    r = CliRunner().invoke(app, ["colorize", "in/", "--output", "o", "--checkpoint", "ck", "--s3-endpoint", endpoint])
    assert r.exit_code == 2, r.output
    [line] = [x for x in r.output.splitlines() if x.startswith("error: ")]
    assert "--s3-endpoint" in line and "s3cr3tZ" not in r.output and "token123secret" not in r.output


def test_a_plain_endpoint_is_accepted():
    assert storage.endpoint_problem("http://127.0.0.1:9000") is None
    assert storage.endpoint_problem(None) is None


def test_a_manifest_of_presigned_urls_keeps_them_for_reading_only(tmp_path):
    """The manifest row's source (and so error text and the output name) holds the URL without its query; the
    item read keeps the whole URL, which a presigned URL needs. A user who needs the full URL joins their own
    manifest on `source` = the URL up to its "?" (docs/security.md)."""
    from raycolor import inputs

    manifest = tmp_path / "list.txt"
    manifest.write_text(PRESIGNED + "\n")
    [item] = inputs.list_items([str(manifest)])
    assert item.source == "https://bucket.s3.amazonaws.com/p/x.jpg" and item.uri == PRESIGNED
    assert _clean(item.relpath) and item.relpath.endswith("p/x.jpg")
