"""C2PA Content Credentials: a signed manifest inside each output that says a trained model made its colour.

The XMP ``Iptc4xmpExt:DigitalSourceType`` raycolor writes (:mod:`raycolor.core.metadata`) is a label anyone can
strip or forge; a C2PA manifest is signed over the file's bytes, so any C2PA reader verifies who made it and from
what, and a changed pixel breaks it. This module signs an output's final bytes with c2pa-python (the ``sign``
extra), embedding one manifest:

* a ``c2pa.actions.v2`` assertion: ``c2pa.opened`` of the source (C2PA requires an edit to begin with
  ``opened``), then ``c2pa.color_adjustments`` with ``digitalSourceType`` :data:`DIGITAL_SOURCE_TYPE`,
  ``softwareAgent`` raycolor and its version, and the model id as its ``model_id`` parameter;
* the source as a ``parentOf`` ingredient named by its file name and identified by its SHA-256
  (``instance_id`` = ``sha256:<hex>`` and ``metadata["raycolor:source_sha256"]``); the source's bytes are not
  embedded (a colorized 39 MP master would otherwise carry its 100 MB source);
* no thumbnail (the SDK's default embeds one: ~470 kB on a 640x480 JPEG, and a re-encode per image).

Keys. :class:`SignConfig` is what the run carries (through Ray, in the config, in logs): the TOML's path and the
*paths* (or ``env:NAME``) it names, never key material. Each worker process builds its own :class:`Signer` from
it, reading the key itself; a Signer refuses to be pickled, so the key cannot travel through Ray's object store.
A key file readable by group or others is refused, and an error text never holds the key (:func:`_scrub`).
docs/security.md says how the key reaches the workers of a cluster.

No Ray, no fsspec: the key and the certificate are local files on the node that signs.
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from raycolor import __version__
from raycolor.core import formats
from raycolor.core.metadata import DIGITAL_SOURCE_TYPE

__all__ = [
    "ALGS", "SignConfig", "SignError", "SignFailed", "Signer", "acceptable", "check_format", "signable", "signer_for",
    "verify",
]

# The algorithms c2patool and c2pa-python name in `alg` (C2PA 2.x: ECDSA, RSASSA-PSS, Ed25519)
ALGS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
ENV_PREFIX = "env:"
COLORIZE_ACTION = "c2pa.color_adjustments"  # the C2PA standard action closest to colorizing
UNTRUSTED = "signingCredential.untrusted"  # a certificate no trust list names (any self-made CA): not a failure here
# Context settings: no thumbnail (the cost, see docs/performance.md); no second read and hash of every signed
# file (a Signer verifies its own key and certificate once, at load); never fetch anything while signing
SETTINGS = {
    "builder": {"thumbnail": {"enabled": False}},
    "verify": {"verify_after_sign": False, "ocsp_fetch": False, "remote_manifest_fetch": False},
}
_INGREDIENT = "source"  # the ingredient's label, which the opened action names
_PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)


class SignError(ValueError):
    """A signing configuration, key or certificate that cannot sign: the run refuses at start. Its text never
    holds key material."""


class SignFailed(RuntimeError):
    """One output the SDK could not sign (a file it cannot parse, a timestamp authority that did not answer):
    that image's ``sign_failed`` row, never the task's end."""


@dataclass(frozen=True)
class SignConfig:
    """The ``--sign CONFIG`` TOML, as c2patool and c2pa-python name its fields::

        alg = "es256"
        sign_cert = "chain.pem"         # the PEM chain, leaf first (relative paths: from the TOML's folder)
        private_key = "key.pem"         # a file only its owner reads (mode 600 or 400), or "env:NAME"
        ta_url = "http://timestamp.example"  # optional RFC 3161 timestamp authority (one request per image)

    It holds paths and the variable's name, never the key (so its repr, a pickled copy in Ray, a log line are
    safe)."""

    path: str  # the TOML's path
    alg: str
    sign_cert: str  # absolute path of the PEM chain
    private_key: str  # absolute path of the key file, or "env:NAME"
    ta_url: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> SignConfig:
        """Read and check a signing TOML (the key itself is only read by :class:`Signer`)."""
        path = Path(path).expanduser()
        try:
            text = path.read_bytes()
        except OSError as e:
            raise SignError(f"cannot read the signing config {str(path)!r}: {e.strerror or e}") from None
        if _PEM_KEY.search(text.decode("utf-8", "replace")):
            raise SignError(f"the signing config {str(path)!r} holds a private key itself; put the key in its own "
                            "file (mode 600) or an environment variable and name it: private_key = \"key.pem\" "
                            "or \"env:NAME\"")
        try:
            doc = _toml().loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise SignError(f"the signing config {str(path)!r} is not valid TOML: {e}") from None
        unknown = sorted(set(doc) - {"alg", "sign_cert", "private_key", "ta_url"})
        if unknown:
            raise SignError(f"the signing config {str(path)!r} has unknown keys {unknown} "
                            "(it takes alg, sign_cert, private_key, ta_url)")
        for key in ("alg", "sign_cert", "private_key"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise SignError(f"the signing config {str(path)!r} needs {key} (a string)")
        alg = doc["alg"].lower()
        if alg not in ALGS:
            raise SignError(f"the signing config's alg {doc['alg']!r} is not one of {', '.join(ALGS)}")
        ta_url = doc.get("ta_url")
        if ta_url is not None and (not isinstance(ta_url, str) or not re.match(r"https?://", ta_url)):
            raise SignError("the signing config's ta_url must be an http(s) URL")
        folder = path.resolve().parent
        key = doc["private_key"]
        if key.startswith(ENV_PREFIX):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key[len(ENV_PREFIX):]):
                raise SignError("the signing config's private_key = \"env:NAME\" needs a variable name after env:")
        else:
            key = str(folder / Path(key).expanduser())
        return cls(path=str(path.resolve()), alg=alg, sign_cert=str(folder / Path(doc["sign_cert"]).expanduser()),
                   private_key=key, ta_url=ta_url)


def signable(fmt: str) -> bool:
    """Whether the C2PA SDK embeds a manifest in this output format (c2pa-python 0.38: JPEG, PNG, TIFF, WebP;
    not JPEG 2000)."""
    c2pa = _c2pa()
    return formats.get(fmt).mime in c2pa.Builder.get_supported_mime_types()


def check_format(fmt: str) -> None:
    """SignError unless outputs of ``fmt`` can be signed: the run's check at start."""
    if not signable(fmt):
        entry = formats.get(fmt)
        can = [f for f in formats.WRITABLE if signable(f)]
        raise SignError(f"--sign cannot sign {entry.name} outputs: the C2PA SDK (c2pa-python "
                        f"{_c2pa_version()}) does not embed manifests in {entry.mime}; write one of "
                        f"{', '.join(can)}")


class Signer:
    """Signs outputs with one key and certificate; one per worker process (building it reads the key, builds the
    SDK's signer and signs and verifies a tiny image, ~10 ms). Not picklable: send the :class:`SignConfig`."""

    def __init__(self, config: SignConfig):
        c2pa = _c2pa()
        self.config = config
        cert = _read_cert(config.sign_cert)
        key = _read_key(config)
        try:
            info = c2pa.C2paSignerInfo(config.alg, cert, key, config.ta_url)
            self._signer = c2pa.Signer.from_info(info)
        except Exception as e:  # the SDK's message may quote what it was given
            raise SignError(f"the key {_key_name(config)} and certificate {config.sign_cert!r} cannot make a "
                            f"{config.alg} signer: {_scrub(e, key)}") from None
        finally:
            info = None  # the struct points at the key's bytes; the SDK holds its own copy now
        self._context = c2pa.Context.from_dict(SETTINGS)
        self._lock = threading.Lock()  # one signature at a time: the SDK's signer is one native object
        self._check(key)

    def __reduce__(self):
        raise TypeError("a Signer holds a private key and is never pickled: send its SignConfig, and build the "
                        "Signer in the process that signs")

    def __repr__(self) -> str:
        return f"Signer({self.config!r})"

    def sign(self, data: bytes, fmt: str, *, source_sha256: str | None, source_name: str, model_id: str) -> bytes:
        """``data`` (an output's final bytes in format ``fmt``) with an embedded C2PA manifest. :class:`SignFailed`
        when the SDK cannot parse or sign this file (the caller makes it that image's ``sign_failed`` row)."""
        c2pa = _c2pa()
        mime = formats.get(fmt).mime
        out = io.BytesIO()
        try:
            builder = c2pa.Builder.from_json(self._manifest(mime, source_sha256, source_name, model_id),
                                             self._context)
            with self._lock:
                builder.sign(self._signer, mime, io.BytesIO(data), out)
        except c2pa.C2paError as e:
            raise SignFailed(_scrub(e, b"")) from None
        return out.getvalue()

    @staticmethod
    def _manifest(mime: str, source_sha256: str | None, source_name: str, model_id: str) -> dict:
        ingredient = {"title": source_name or "source", "relationship": "parentOf", "label": _INGREDIENT}
        if source_sha256:
            ingredient["instance_id"] = f"sha256:{source_sha256}"
            ingredient["metadata"] = {"raycolor:source_sha256": source_sha256}
        source_format = _mime_of_name(source_name)
        if source_format:
            ingredient["format"] = source_format
        agent = {"name": "raycolor", "version": __version__}
        return {
            "claim_generator_info": [agent],
            "format": mime,
            "ingredients": [ingredient],
            "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
                {"action": "c2pa.opened", "parameters": {"ingredientIds": [_INGREDIENT]}},
                {"action": COLORIZE_ACTION, "digitalSourceType": DIGITAL_SOURCE_TYPE, "softwareAgent": agent,
                 "description": "colorized by a trained model", "parameters": {"model_id": model_id}},
            ]}}],
        }

    def _check(self, key: bytes) -> None:
        """Sign a tiny JPEG and verify it: a key that is not the certificate's, or a certificate the SDK refuses,
        fails here, before any image of the run."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 64, 32)).save(buf, format="JPEG")
        try:
            signed = self.sign(buf.getvalue(), "jpeg", source_sha256="0" * 64, source_name="check.jpg",
                               model_id="check")
            state, failures = verify(signed, "jpeg")
        except Exception as e:
            raise SignError(f"signing a test image with the key {_key_name(self.config)} and certificate "
                            f"{self.config.sign_cert!r} failed: {_scrub(e, key)}") from None
        if not acceptable(state, failures):
            raise SignError(f"a test image signed with the key {_key_name(self.config)} and certificate "
                            f"{self.config.sign_cert!r} does not verify ({state}: {', '.join(failures)}): is the "
                            "key the certificate's, and the chain leaf first?")


_SIGNERS: dict[SignConfig, Signer] = {}
_SIGNERS_LOCK = threading.Lock()


def signer_for(config: SignConfig) -> Signer:
    """This process's Signer for ``config``, built on first use (a finish task's process signs many batches with
    one; building it reads the key and checks it, ~10 ms)."""
    with _SIGNERS_LOCK:
        signer = _SIGNERS.get(config)
        if signer is None:
            signer = _SIGNERS[config] = Signer(config)
        return signer


def verify(data: bytes, fmt: str) -> tuple[str, list[str]]:
    """(validation state, failure codes) of a signed file's active manifest, as c2pa's Reader gives them: state
    "Valid" (or "Trusted" with a trust list) when the signature and every hash match; "Invalid" otherwise, e.g.
    with ``assertion.dataHash.mismatch`` after one changed byte. Raises c2pa.C2paError when there is no
    manifest. Offline: no OCSP, no remote manifest."""
    c2pa = _c2pa()
    reader = c2pa.Reader(formats.get(fmt).mime, io.BytesIO(data), context=_reader_context())
    return reader.get_validation_state(), failure_codes(reader)


def acceptable(state: str, failures: list[str], *, trust_list: bool = False) -> bool:
    """Whether a manifest verifies: valid (trusted when a trust list is configured), and without a trust list
    no failure besides :data:`UNTRUSTED` (every certificate is untrusted then)."""
    if trust_list:
        return state == "Trusted" and not failures
    return state in ("Valid", "Trusted") and not set(failures) - {UNTRUSTED}


_READER_CONTEXT = None


def _reader_context():
    global _READER_CONTEXT
    if _READER_CONTEXT is None:
        _READER_CONTEXT = _c2pa().Context.from_dict(SETTINGS)
    return _READER_CONTEXT


def failure_codes(reader) -> list[str]:
    """The validation failure codes of a c2pa Reader's active manifest."""
    results = reader.get_validation_results() or {}
    return [f.get("code", "?") for f in (results.get("activeManifest") or {}).get("failure", [])]


# --------------------------------------------------------------------------- reading the key and certificate


def _read_cert(path: str) -> bytes:
    try:
        cert = Path(path).read_bytes()
    except OSError as e:
        raise SignError(f"cannot read the certificate chain {path!r}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise SignError(f"{path!r} is not a PEM certificate chain (no BEGIN CERTIFICATE)")
    if _PEM_KEY.search(cert.decode("utf-8", "replace")):
        raise SignError(f"{path!r} holds a private key beside the certificates: keep the key in its own file")
    return cert


def _read_key(config: SignConfig) -> bytes:
    """The private key's PEM bytes, from its file (refused when group or others may read it) or variable."""
    name = config.private_key
    if name.startswith(ENV_PREFIX):
        var = name[len(ENV_PREFIX):]
        value = os.environ.get(var)
        if not value:
            raise SignError(f"the environment variable {var} (private_key = \"env:{var}\") is not set in this "
                            "process; set it on every node (not in Ray's runtime_env: see docs/security.md)")
        key = value.encode()
    else:
        try:
            with open(name, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode  # of the file opened, not of a path that may change under us
                if mode & 0o077:
                    raise SignError(f"the private key file {name!r} is readable or writable by group or others "
                                    f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {name}")
                key = f.read()
        except OSError as e:
            raise SignError(f"cannot read the private key file {name!r}: {e.strerror or e}") from None
    if b"PRIVATE KEY-----" not in key:
        raise SignError(f"the private key {_key_name(config)} is not a PEM private key")
    return key


def _key_name(config: SignConfig) -> str:
    return repr(config.private_key)


def _scrub(exc: BaseException, key: bytes) -> str:
    """An exception's text with any PEM private key, and any line of ``key``, taken out."""
    text = _PEM_KEY.sub("[private key]", f"{type(exc).__name__.lstrip('_')}: {exc}")
    for line in key.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if len(line) >= 8 and "-----" not in line:
            text = text.replace(line, "[private key]")
    return " ".join(text.split())[:500]


def _mime_of_name(name: str) -> str:
    suffix = Path(name or "").suffix.lower()
    fmt = next((f for f in formats.REGISTRY.values() if suffix in f.suffixes), None)
    return fmt.mime if fmt is not None else ""


def _c2pa():
    try:
        import c2pa
    except ImportError:
        raise SignError("--sign needs c2pa-python: pip install 'raycolor[sign]'") from None
    return c2pa


def _c2pa_version() -> str:
    from importlib.metadata import version

    return version("c2pa-python")


def _toml():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib
