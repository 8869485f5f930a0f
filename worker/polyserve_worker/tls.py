"""TLS for the HTTP and gRPC ports, from certificate files that are renewed in place.

A certificate in a pod comes from a Secret (cert-manager's ``tls.crt``/``tls.key``), which
the kubelet updates by swapping the mounted files when the certificate is renewed, weeks
before it expires. So the files are checked as connections arrive (at most once every
``CHECK_SECS``), and a changed pair is served to new connections; open connections keep the
certificate they shook hands with. A pair that cannot be loaded (unreadable, not matching)
keeps the last good one in service and is logged; at start it is an error.

This module knows files and TLS, not the servers: it gives an ``ssl.SSLContext`` for
aiohttp and ``grpc.ServerCredentials`` for grpc.aio. With a client CA, both ports require a
client certificate it signed (mutual TLS).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from polyserve_worker import clock as clocks
from polyserve_worker import errors

logger = logging.getLogger(__name__)

#: How often at most the files are looked at (two or three ``stat`` calls), however many
#: connections arrive: a renewal is served within a second of the kubelet's swap.
CHECK_SECS = 1.0


@dataclass(frozen=True)
class Pem:
    """One loaded generation of the files."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext


class Certificates:
    """The files, what was last loaded from them, and the servers' views of it."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        clock: clocks.Clock | None = None,
    ) -> None:
        self.paths = (cert, key, *((client_ca,) if client_ca is not None else ()))
        self.client_ca = client_ca
        self._clock = clock or clocks.MonotonicClock()
        self._lock = threading.Lock()  # gRPC asks from its own threads
        self._seen = self._stamp()
        try:
            self.current = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise errors.ServerError(
                f"cannot serve TLS with {', '.join(map(str, self.paths))}: {exc}"
            ) from exc
        self._checked = self._clock.now()
        self._served = self.current  # what gRPC was last given

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        """What tells a changed file: its inode (a swap), size and modification time."""
        found = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                found.append((0, 0, 0))
            else:
                found.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(found)

    def _load(self) -> Pem:
        cert, key = self.paths[0].read_bytes(), self.paths[1].read_bytes()
        client_ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.paths[0], self.paths[1])
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=client_ca.decode())
        context.sni_callback = self._on_hello
        return Pem(cert, key, client_ca, context)

    def refresh(self) -> Pem:
        """The files' current generation: reloaded when they changed (checked at most once
        every ``CHECK_SECS``)."""
        with self._lock:
            now = self._clock.now()
            if now - self._checked < CHECK_SECS:
                return self.current
            self._checked = now
            stamp = self._stamp()
            if stamp == self._seen:
                return self.current
            try:
                loaded = self._load()
            except (OSError, ssl.SSLError, ValueError) as exc:
                # Mid-swap or broken: keep serving the last good pair, look again later.
                logger.warning("TLS files changed but cannot be loaded (kept the last): %s", exc)
                return self.current
            self._seen, self.current = stamp, loaded
            logger.info("TLS certificate reloaded from %s", self.paths[0])
            return loaded

    def _on_hello(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        """Each handshake (SNI callback, called with or without a server name): switch the
        connection to the newest context before the certificate is chosen."""
        fresh = self.refresh().context
        if connection.context is not fresh:
            connection.context = fresh

    def ssl_context(self) -> ssl.SSLContext:
        """For the HTTP server: every handshake is served the newest certificate."""
        return self.current.context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For grpc.aio: asked at each new connection, answered with a new configuration
        only when the files changed."""

        def configuration(pem: Pem) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(pem.key, pem.cert)], root_certificates=pem.client_ca
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            pem = self.refresh()
            if pem is self._served:
                return None  # unchanged
            self._served = pem
            return configuration(pem)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self.current),
            fetch,
            require_client_authentication=self.client_ca is not None,
        )
