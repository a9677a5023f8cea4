"""TLS for the server, mutual TLS when a client CA is given; certificates are re-read when
their files change, so they rotate without a restart."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)


class TLSError(ValueError):
    """A certificate, key or CA file cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class CertificateFiles:
    certificate: Path
    key: Path
    # Mutual TLS: client certificates must be signed by this CA.
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The files' contents, checked: the certificate chain parses and matches the key, and
        the CA parses. Raises TLSError naming the file."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certificate, self.key)
        except (OSError, ssl.SSLError) as error:
            raise TLSError(
                f"cannot use the certificate {self.certificate} with the key {self.key}: "
                f"{_reason(error)}"
            ) from error
        ca = None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (OSError, ssl.SSLError) as error:
                raise TLSError(
                    f"cannot use the client CA {self.client_ca}: {_reason(error)}"
                ) from error
            ca = self.client_ca.read_bytes()
        return self.certificate.read_bytes(), self.key.read_bytes(), ca

    def stamp(self) -> tuple[float, ...]:
        """When the files last changed (0 for one that cannot be read now)."""
        return tuple(_mtime(path) for path in (self.certificate, self.key, self.client_ca))


class ReloadingCredentials:
    """gRPC server credentials that look at the files at each new connection's handshake and
    switch to their new contents once they have changed and check out; a rotation half-done
    (a certificate not matching its key yet) keeps the last good configuration."""

    def __init__(self, files: CertificateFiles) -> None:
        self._files = files
        self._stamp = files.stamp()
        self._initial = self._configuration(*files.read())  # TLSError: the boot stops

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,
            require_client_authentication=self._files.client_ca is not None,
        )

    def _fetch(self) -> Any:
        stamp = self._files.stamp()
        if stamp == self._stamp:
            return None  # unchanged: keep the current configuration
        try:
            configuration = self._configuration(*self._files.read())
        except TLSError as error:
            log.warning("keeping the current certificates: %s", error)
            return None
        self._stamp = stamp
        log.info("certificates reloaded from %s", self._files.certificate)
        return configuration

    @staticmethod
    def _configuration(certificate: bytes, key: bytes, ca: bytes | None) -> Any:
        return grpc.ssl_server_certificate_configuration([(key, certificate)], ca)


def principal_of(context: Any) -> str | None:
    """The client certificate's identity (mutual TLS): its first subject alternative name,
    else its common name; None without a client certificate."""
    auth = context.auth_context()
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        values = auth.get(key)
        if values:
            return bytes(values[0]).decode(errors="replace")
    return None


def _mtime(path: Path | None) -> float:
    if path is None:
        return 0.0
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return 0.0


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or "not a PEM certificate or key"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return type(error).__name__
