"""The lean HTTP front (--http-transport httptools): the same answers as aiohttp's, and the
parts of HTTP/1.1 it handles itself (pipelining, 100-continue, limits, keep-alive).

test_http.py, test_limits.py and test_draining.py run on both fronts too (``http_fronts``)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polyserve_worker.transport import http1
from tests.worker import models
from tests.worker.conftest import RunningWorker, StartWorker
from tests.worker.test_lifecycle import start_process
from tests.worker.test_limits import closed_within


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return models.triton_repository(tmp_path / "repo")


@pytest.fixture
def lean(repo: Path, start_worker: StartWorker) -> RunningWorker:
    return start_worker(repo, http_transport="httptools", http_max_input_size=1 << 16)


def _connect(worker: RunningWorker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", worker.worker.http_port), timeout=10)
    return sock


def _read_response(
    sock: socket.socket, buffer: bytearray, head_only: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (what was read past it stays in ``buffer``); ``head_only``
    for the answer to a HEAD request."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(buffer) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside a body"
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, headers, body


def _request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    fields = {"Host": "x", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if body or method == "POST":
        fields.setdefault("Content-Length", str(len(body)))
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body


def _infer_body(batch: int = 1) -> bytes:
    data = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16).tolist()
    return json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "shape": [batch, 16], "datatype": "INT32", "data": data},
                {"name": "INPUT1", "shape": [batch, 16], "datatype": "INT32", "data": data},
            ]
        }
    ).encode()


def _binary_infer_body() -> tuple[bytes, str]:
    tensor = np.arange(16, dtype=np.int32).reshape(1, 16).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": [1, 16],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": len(tensor)},
                }
                for name in ("INPUT0", "INPUT1")
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + tensor + tensor, str(len(header))


# Every route, and the mistakes a client makes on them: both fronts must answer each alike.
_BINARY, _HEADER = _binary_infer_body()
CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("GET", "/v2/health/live", b"", {}),
    ("GET", "/v2/health/ready", b"", {}),
    ("GET", "/v2", b"", {}),
    ("HEAD", "/v2", b"", {}),
    ("GET", "/v2/models/stats", b"", {}),
    ("GET", "/v2/models/simple", b"", {}),
    ("GET", "/v2/models/simple/versions/1", b"", {}),
    ("GET", "/v2/models/simple/ready", b"", {}),
    ("GET", "/v2/models/simple/config", b"", {}),
    ("GET", "/v2/models/%73imple/config", b"", {}),
    ("GET", "/v2/models/simple/versions/7/ready", b"", {}),
    ("GET", "/v2/models/nothing", b"", {}),
    ("GET", "/v2/models/simple/", b"", {}),
    ("GET", "/v2/nothing?x=1", b"", {}),
    ("DELETE", "/v2/models/simple/infer", b"", {}),
    ("POST", "/v2/models/simple/infer", _infer_body(), {"Content-Type": "application/json"}),
    ("POST", "/v2/models/simple/infer?trace=1", _infer_body(2), {}),
    ("POST", "/v2/models/simple/versions/1/infer", _infer_body(), {}),
    ("POST", "/v2/models/simple/infer", _BINARY, {"Inference-Header-Content-Length": _HEADER}),
    ("POST", "/v2/models/simple/infer", b"{not json", {}),
    ("POST", "/v2/models/simple/infer", b"", {}),
    ("POST", "/v2/models/simple/infer", _infer_body(), {"Content-Type": "text/xml"}),
    ("POST", "/v2/models/simple/infer", _infer_body(9), {}),
    ("POST", "/v2/models/nothing/infer", _infer_body(), {}),
    ("POST", "/v2/models/simple/infer", b"x" * 70_000, {}),
    ("POST", "/v2/repository/index", b"", {}),
    ("POST", "/v2/repository/index", b'{"ready": true}', {}),
    ("POST", "/v2/repository/models/nothing/load", b"", {}),
    ("GET", "/v2/systemsharedmemory/status", b"", {}),
    ("GET", "/v2/systemsharedmemory/region/none/status", b"", {}),
    ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": 1}', {}),
    ("POST", "/v2/systemsharedmemory/unregister", b"", {}),
    ("GET", "/v2/cudasharedmemory/status", b"", {}),
]


def _answer(worker: RunningWorker, case: tuple[str, str, bytes, dict[str, str]]) -> Any:
    method, path, body, headers = case
    with _connect(worker) as sock:
        sock.sendall(_request(method, path, body, **headers))
        status, got, payload = _read_response(sock, bytearray(), method == "HEAD")
    kind = got.get("content-type", "").split(";")[0]
    header_size = got.get("inference-header-content-length")
    if kind == "application/json" and payload:
        content: Any = json.loads(payload)
    elif header_size is not None:
        content = (json.loads(payload[: int(header_size)]), payload[int(header_size) :])
    else:
        content = payload
    return status, kind, content


def test_both_fronts_answer_every_route_alike(repo: Path, start_worker: StartWorker) -> None:
    limits = {"http_max_input_size": 1 << 16}
    fronts = [start_worker(repo, http_transport=t, **limits) for t in ("aiohttp", "httptools")]
    for case in CASES:
        ours, theirs = (_answer(front, case) for front in fronts)
        assert ours == theirs, case[:2]
    statuses = {_answer(fronts[1], case)[0] for case in CASES}
    assert statuses == {200, 400, 404, 405, 413, 501}  # every kind of answer is compared


def test_pipelined_requests_are_answered_in_order(lean: RunningWorker) -> None:
    with _connect(lean) as sock:
        sock.sendall(
            _request("GET", "/v2/health/ready")
            + _request("POST", "/v2/models/simple/infer", _infer_body(3))
            + _request("GET", "/v2/models/nothing")
            + _request("GET", "/v2/models/simple")
        )
        buffer = bytearray()
        answers = [_read_response(sock, buffer) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 404, 200]
    assert json.loads(answers[1][2])["outputs"][0]["shape"] == [3, 16]
    assert json.loads(answers[3][2])["name"] == "simple"


def test_expect_100_continue_is_answered_before_the_body_is_sent(lean: RunningWorker) -> None:
    body = _infer_body()
    with _connect(lean) as sock:
        head = _request("POST", "/v2/models/simple/infer", b"", Expect="100-continue")
        sock.sendall(head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, _ = _read_response(sock, bytearray())
    assert status == 200


def test_a_body_announced_over_the_limit_is_413_before_it_is_sent(lean: RunningWorker) -> None:
    with _connect(lean) as sock:
        sock.sendall(
            b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"--http-max-input-size" in answer and b"100 Continue" not in answer


def test_a_chunked_body_over_the_limit_is_413_and_the_connection_closes(
    lean: RunningWorker,
) -> None:
    chunk = b"x" * 40_000
    with _connect(lean) as sock:
        sock.sendall(
            b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_within_the_limit_is_served(lean: RunningWorker) -> None:
    body = _infer_body()
    half = len(body) // 2
    with _connect(lean) as sock:
        sock.sendall(
            b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for part in (body[:half], body[half:]):
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        status, _, payload = _read_response(sock, bytearray())
    assert status == 200 and json.loads(payload)["outputs"]


def test_an_overlong_request_line_is_414(lean: RunningWorker) -> None:
    with _connect(lean) as sock:
        sock.sendall(b"GET /v2/" + b"a" * (http1.MAX_LINE + 10) + b" HTTP/1.1\r\n\r\n")
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 414 ")


def test_a_header_block_over_the_limit_is_431(lean: RunningWorker) -> None:
    with _connect(lean) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * (http1.MAX_HEAD + 10))
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_too_many_header_fields_are_431(lean: RunningWorker) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(http1.MAX_FIELDS + 1))
    with _connect(lean) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\n" + fields + b"\r\n")
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_malformed_request_is_400_and_the_connection_closes(lean: RunningWorker) -> None:
    with _connect(lean) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"malformed HTTP request" in answer


def test_a_protocol_upgrade_is_answered_without_it_and_the_connection_closes(
    lean: RunningWorker,
) -> None:
    with _connect(lean) as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: h2c\r\n\r\n"
        )
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"live": true}')


def test_http_1_0_keeps_the_connection_only_when_asked(lean: RunningWorker) -> None:
    with _connect(lean) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = _read_response(sock, bytearray())
        assert status == 200 and headers["connection"].lower() == "keep-alive"
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        answer = closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer


def test_a_client_that_does_not_read_its_answers_is_not_read_either(
    lean: RunningWorker,
) -> None:
    """Pipelined requests whose answers pile up unread: the server stops reading, so what it
    holds for that connection stays bounded, and other clients are served meanwhile."""
    request = _request("GET", "/v2/models/simple/config")
    with _connect(lean) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sent += sock.send(request * 64)
            except BlockingIOError:
                break  # the server stopped reading: both socket buffers are full
        else:
            raise AssertionError("the server kept reading requests whose answers were unread")
        with _connect(lean) as other:
            other.sendall(_request("GET", "/v2/health/ready"))
            status, _, _ = _read_response(other, bytearray())
    assert status == 200 and sent > len(request)


def test_a_worker_started_with_the_flag_serves_on_the_lean_front(repo: Path) -> None:
    proc, http_port, _ = start_process(repo, 5, "--http-transport=httptools")
    try:
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
            sock.sendall(_request("POST", "/v2/models/simple/infer", _infer_body()))
            status, headers, payload = _read_response(sock, bytearray())
        assert status == 200 and headers["server"] == "polyserve"
        assert json.loads(payload)["outputs"][0]["name"] == "OUTPUT0"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
