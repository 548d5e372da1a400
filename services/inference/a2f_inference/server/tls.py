"""TLS and mutual TLS for the gRPC port, with certificate files re-read when they change.

cert-manager (and most secret stores) rotate a Kubernetes Secret in place: the files behind
the mount change, the process keeps running. gRPC's dynamic server credentials ask us for a
certificate configuration at every new TLS handshake; :class:`RotatingCertificates` answers
``None`` (keep the current one) unless the files changed on disk since the last answer, in
which case it reads and checks them and hands gRPC the new pair. Connections already open keep
the session they negotiated, so open streams are not dropped by a rotation.

A rotation caught half-way (a new certificate beside the old key) fails the key/certificate
match check; the previous configuration then stays in use (logged and counted once) and the
files are tried again at the first handshake after any of them changes again, so a server never
starts serving a broken pair. Each listener (the gRPC port, the admin listener) is handed the
new configuration at its own next handshake.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from a2f_inference.tls_client import read_pem
from a2f_volume.errors import InvalidArgumentError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TlsFiles:
    """Paths of the server's PEM files; ``client_ca`` set means client certificates required."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_settings(cls, cert: Path | None, key: Path | None,
                      client_ca: Path | None) -> TlsFiles | None:
        """None (plaintext) when no file is set; a clear error when the set is incomplete."""
        if cert is None and key is None:
            if client_ca is not None:
                raise InvalidArgumentError(
                    "tls_client_ca_file needs tls_cert_file and tls_key_file: client "
                    "certificates are only checked on a TLS port")
            return None
        if cert is None or key is None:
            missing = "tls_cert_file" if cert is None else "tls_key_file"
            raise InvalidArgumentError(
                f"TLS needs both tls_cert_file and tls_key_file; {missing} is not set")
        return cls(Path(cert), Path(key), Path(client_ca) if client_ca is not None else None)

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


@dataclass(frozen=True)
class PemSet:
    """The bytes of one consistent set of files."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


def read_pem_set(files: TlsFiles) -> PemSet:
    """Read and check the files: PEM, and the key matches the certificate.

    Raises :class:`InvalidArgumentError` naming the file and what is wrong.
    """
    cert = read_pem(files.cert, "tls_cert_file")
    key = read_pem(files.key, "tls_key_file")
    ca = read_pem(files.client_ca, "tls_client_ca_file") if files.client_ca else None
    _check_pair(files, cert, key)
    return PemSet(cert, key, ca)


def _check_pair(files: TlsFiles, cert: bytes, key: bytes) -> None:
    """The private key belongs to the (first) certificate of the chain.

    Checked with the standard library's ``ssl`` (OpenSSL's own key/certificate match) on a
    private copy of the bytes, so the check sees exactly what gRPC will be given.
    """
    with tempfile.TemporaryDirectory(prefix="a2f-tls-") as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as err:
            raise InvalidArgumentError(
                f"tls_cert_file {files.cert} and tls_key_file {files.key} are not a usable "
                f"pair (a certificate and its unencrypted private key): {err.reason or err}"
            ) from err


def _no_password() -> bytes:
    """An encrypted key is refused instead of OpenSSL prompting on a terminal."""
    return b""


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when a file is replaced or rewritten (a Secret's symlink swap included)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((-1, -1, -1, -1))
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class RotatingCertificates:
    """Dynamic server credentials over :class:`TlsFiles`; reloads changed files.

    ``on_reload(ok)`` (optional) is called after every attempt to load changed files, for
    metrics. Thread-safe: gRPC asks for the configuration from its own threads.
    """

    def __init__(self, files: TlsFiles,
                 on_reload: Callable[[bool], None] | None = None) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._on_reload = on_reload
        self._signature = _signature(files.paths())
        self._failed_signature: tuple[tuple[int, int, int, int], ...] | None = None
        self._current = read_pem_set(files)
        self._generation = 0
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def require_client_auth(self) -> bool:
        return self.files.client_ca is not None

    def _configuration(self, pem: PemSet) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pem.key, pem.cert)], root_certificates=pem.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials for one ``add_secure_port``; each listener gets its own (each
        remembers which configuration it handed to gRPC last)."""
        handed = [self._generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # gRPC's per-handshake question: a new configuration, or None to keep the current.
            with self._lock:
                self._refresh()
                if handed[0] == self._generation:
                    return None
                handed[0] = self._generation
                return self._configuration(self._current)

        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._current), fetch,
            require_client_authentication=self.require_client_auth)

    def _refresh(self) -> None:
        """Load the files if they changed on disk since the last look (lock held)."""
        sig = _signature(self.files.paths())
        if sig in (self._signature, self._failed_signature):
            return
        try:
            pem = read_pem_set(self.files)
        except InvalidArgumentError as err:
            # Half-rotated or unreadable: keep serving the previous pair; the next change
            # of any of the files is tried again.
            self._failed_signature = sig
            self.failed_reloads += 1
            log.warning("TLS files changed but cannot be used yet, keeping the previous "
                        "certificate: %s", err)
            self._notify(False)
            return
        self._signature = sig
        self._failed_signature = None
        if pem == self._current:
            return
        self._current = pem
        self._generation += 1
        self.reloads += 1
        log.info("TLS certificate files changed on disk: new certificate in use for new "
                 "connections (%s)", self.files.cert)
        self._notify(True)

    def _notify(self, ok: bool) -> None:
        cb = self._on_reload
        if cb is not None:
            try:
                cb(ok)
            except Exception:
                log.exception("TLS reload callback failed")
