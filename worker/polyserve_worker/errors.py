"""The worker's one error hierarchy.

The core raises these and knows nothing of HTTP or gRPC; each transport maps them to its
status codes with a single table (``transport.rest.STATUS``, ``transport.grpc.STATUS``).

    PolyserveError
    ├── ClientError               the caller can fix it
    │   ├── InvalidArgument       bad input: shape, dtype, size, JSON, parameters (400)
    │   ├── NotFound              unknown model, version or region (404)
    │   ├── Unavailable           not ready, queue full, timed out, shutting down (503)
    │   ├── Unsupported           not implemented by this server (501)
    │   ├── PayloadTooLarge       body over --http-max-input-size (413)
    │   ├── RequestTimeout        body not received within --http-body-timeout-secs (408)
    │   └── ModelLoadError        a model's files or config are wrong; the rest keep serving (400)
    └── ServerError               our fault or the backend's (500)
"""

from __future__ import annotations


class PolyserveError(Exception):
    """Root of every error the worker raises on purpose."""


class ClientError(PolyserveError):
    """The request is at fault; logged without a traceback."""


class InvalidArgument(ClientError):
    pass


class NotFound(ClientError):
    pass


class Unavailable(ClientError):
    pass


class Unsupported(ClientError):
    pass


class PayloadTooLarge(ClientError):
    pass


class RequestTimeout(ClientError):
    """The client did not send its request in time."""


class ModelLoadError(ClientError):
    """The repository holds something that cannot be served; its owner must fix it."""


class ServerError(PolyserveError):
    """The server or a backend failed; logged once with a traceback."""
