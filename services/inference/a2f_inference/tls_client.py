"""TLS pieces a client needs, shared by ``a2f-client`` and the server's TLS module.

:func:`read_pem` reads one bounded PEM file and names the setting it came from when it cannot;
:func:`client_credentials` builds a channel's credentials: the CA that signed the server's
certificate (None: the system's roots) and, for mutual TLS, the client's own certificate and
key.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from a2f_volume.errors import InvalidArgumentError

#: A PEM file larger than this is not a certificate, key or CA bundle we will read.
MAX_PEM_BYTES = 1024 * 1024


def read_pem(path: Path, what: str) -> bytes:
    """The bytes of a PEM file; :class:`InvalidArgumentError` naming ``what`` and the path
    when it is missing, unreadable, over :data:`MAX_PEM_BYTES` or not PEM."""
    try:
        size = path.stat().st_size
        if size > MAX_PEM_BYTES:
            raise InvalidArgumentError(
                f"{what} {path} is {size} bytes; a PEM file over {MAX_PEM_BYTES} bytes is "
                "not accepted")
        data = path.read_bytes()
    except OSError as err:
        raise InvalidArgumentError(f"cannot read {what} {path}: {err.strerror or err}") from err
    if b"-----BEGIN " not in data:
        raise InvalidArgumentError(f"{what} {path} is not PEM (no '-----BEGIN' line)")
    return data


def client_credentials(ca_file: Path | None, cert_file: Path | None = None,
                       key_file: Path | None = None) -> grpc.ChannelCredentials:
    """Channel credentials for a client: the server's CA (None = system roots) and, for mTLS,
    the client's certificate and key (both or neither)."""
    if (cert_file is None) != (key_file is None):
        raise InvalidArgumentError("a client certificate needs both --tls-cert-file and "
                                   "--tls-key-file")
    ca = read_pem(Path(ca_file), "--tls-ca-file") if ca_file is not None else None
    cert = read_pem(Path(cert_file), "--tls-cert-file") if cert_file is not None else None
    key = read_pem(Path(key_file), "--tls-key-file") if key_file is not None else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)
