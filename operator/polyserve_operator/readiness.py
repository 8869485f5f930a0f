"""The operator's readiness: ``GET /readyz`` on its own port, for the pod's readiness probe.

kopf's health endpoint says the operator process is alive (the liveness probe uses it); it
knows nothing of the admission webhook. Readiness is what the webhook's Service follows: the
API server is sent to an operator only while it is Ready. So, with the webhook enabled,
``/readyz`` answers 200 only after this process has connected to its own webhook port,
completed a TLS handshake that verifies the served certificate against the CA bundle the
webhook configuration carries (for the hostname the API server uses) and read an HTTP answer;
else 503 and why. A kopf webhook server restarting for a renewed certificate, a certificate
that no longer matches its CA, or a server that never started each make the pod unready.
Without the webhook the operator is ready as soon as it serves this endpoint.

The check runs per probe, in the server's thread, within ``TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import http.server
import logging
import socket
import ssl
import threading
from dataclasses import dataclass

from polyserve_operator import settings

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2.0
PATH = "/readyz"


class Readiness:
    """Whether the operator can answer the API server now (see the module docstring)."""

    def __init__(self, webhook: settings.Webhook, timeout: float = TIMEOUT_SECONDS) -> None:
        self.webhook = webhook
        self.timeout = timeout

    def _context(self) -> ssl.SSLContext:
        hook = self.webhook
        # The bundle the API server is given: the CA file, else the certificate itself (kopf
        # uses it as the bundle then), else kopf's own self-signed one, which nothing verifies.
        bundle = hook.cafile or hook.certfile
        if bundle is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        context = ssl.create_default_context(cafile=str(bundle))
        context.check_hostname = hook.host is not None
        return context

    def problem(self) -> str | None:
        """None when ready, else why not."""
        hook = self.webhook
        if not hook.enabled:
            return None
        target = "127.0.0.1" if hook.addr in ("", "0.0.0.0") else hook.addr
        try:
            with socket.create_connection((target, hook.port), timeout=self.timeout) as raw:
                if hook.insecure:
                    return _answers(raw, hook.host or target)
                name = hook.host or target
                with self._context().wrap_socket(raw, server_hostname=name) as tls:
                    return _answers(tls, name)
        except ssl.SSLCertVerificationError as exc:
            return (
                f"the webhook's certificate does not verify with its CA bundle "
                f"({exc.verify_message})"
            )
        except (OSError, ssl.SSLError) as exc:
            return f"the webhook does not answer on {target}:{hook.port}: {exc}"


def _answers(sock: socket.socket, host: str) -> str | None:
    """Send one request; None when an HTTP answer (any status) comes back."""
    sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    head = sock.recv(64)
    if head.startswith(b"HTTP/1."):
        return None
    return f"the webhook answered no HTTP ({head[:20]!r})"


@dataclass
class Server:
    """A running ``/readyz`` endpoint."""

    httpd: http.server.ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve(addr: str, port: int, readiness: Readiness) -> Server:
    """Serve ``/readyz`` from a daemon thread; port 0 picks a free one."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != PATH:
                self._answer(404, "not found\n")
                return
            problem = readiness.problem()
            if problem is None:
                self._answer(200, "ok\n")
            else:
                logger.info("not ready: %s", problem)
                self._answer(503, problem + "\n")

        def _answer(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds: not worth a log line each

    httpd = http.server.ThreadingHTTPServer((addr, port), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="readiness", daemon=True)
    thread.start()
    return Server(httpd, thread)
