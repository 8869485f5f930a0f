"""REST transport: the Open Inference Protocol's HTTP paths plus Triton's extensions.

Decodes JSON and Triton's binary tensor data extension (``Inference-Header-Content-Length``)
into numpy arrays, calls the dataplane, and encodes the answer the way the request asked
(``binary_data``, ``binary_data_output``). Every error is ``{"error": "..."}`` with the status
from ``STATUS``; no error path can take the server down.

A request body must arrive within the body timeout (408 otherwise, and the connection
closes). While the worker drains (``DataPlane.draining``), every response carries
``Connection: close``, so a client moves to another replica after its answer instead of
reusing a connection that is about to close; every request is counted in
``DataPlane.activity``, so the server can tell when the connections have gone quiet.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from polyserve_worker import config as model_config
from polyserve_worker import dataplane, errors, shm, tensors, transport

logger = logging.getLogger(__name__)

#: Bodies at least this large with a Content-Length are read straight into one buffer of
#: that size (``_read_exactly``); smaller ones through aiohttp's ``read``, whose two copies
#: cost less than the extra awaits.
PREALLOCATE_BYTES = 64 * 1024

#: Error class -> HTTP status, the one table for this transport (most specific first).
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (errors.InvalidArgument, 400),
    (errors.ModelLoadError, 400),
    (errors.NotFound, 404),
    (errors.PayloadTooLarge, 413),
    (errors.RequestTimeout, 408),
    (errors.Unsupported, 501),
    (errors.Unavailable, 503),
    (errors.ClientError, 400),
    (errors.ServerError, 500),
)

_ACCEPTED_TYPES = {
    "",
    "application/json",
    "application/octet-stream",
    "application/x-www-form-urlencoded",  # curl -d's default; the body is still JSON
    "text/plain",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A handler of the route table: it takes aiohttp's request or transport/http1.py's.
AnyHandler = Callable[[Any], Awaitable[web.StreamResponse]]

#: dtypes orjson serializes natively (BYTES, FP16 and BF16 go through tensors.to_json).
_NUMPY_JSON = {
    np.dtype(t)
    for t in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float32,
        np.float64,
    )
}


def status_of(exc: Exception) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def failure(exc: Exception, method: str, path: str) -> tuple[int, str]:
    """The status and message a request that raised ``exc`` is answered with (both fronts)."""
    if isinstance(exc, errors.PolyserveError):
        status = status_of(exc)
        # Server faults were logged once where they happened (the dataplane).
        logger.debug("%s %s answered %d: %s", method, path, status, exc)
        return status, str(exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return 413, f"request body too large: {exc.text}"
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        if exc.status == 404:
            return 404, f"no endpoint {method} {path}"
        if exc.status == 405:
            return 405, f"{method} is not allowed on {path}"
        return exc.status, exc.reason
    logger.exception("%s %s crashed", method, path, exc_info=exc)
    return 500, f"internal error: {exc}"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(*failure(exc, request.method, request.path))
    except Exception as exc:  # the last line of defence: one request, one answer
        response = error_response(*failure(exc, request.method, request.path))
        if isinstance(exc, errors.RequestTimeout):
            response.force_close()  # the rest of the body may still be on its way
        return response


class RestServer:
    def __init__(
        self,
        core: dataplane.DataPlane,
        max_input_size: int = 64 * 1024 * 1024,
        body_timeout: float = 60.0,
    ) -> None:
        self.core = core
        self.max_input_size = max_input_size
        self.body_timeout = body_timeout
        self.app = web.Application(
            middlewares=[self._track, _errors], client_max_size=max_input_size
        )
        self._routes()

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        with self.core.activity:
            response = await handler(request)
            if self.core.draining:
                response.force_close()  # Connection: close, then the connection closes
            return response

    async def _read(self, request: Any) -> bytes | bytearray:
        """The request body, within the body timeout. transport/http1.py's requests carry
        theirs whole: that front answers a body that is late itself."""
        if not isinstance(request, web.BaseRequest):
            body: bytes | bytearray = request.body
            return body
        length = request.content_length
        if request.content.is_eof() and (length is None or length < PREALLOCATE_BYTES):
            return await request.read()  # all here already: no timer to arm
        try:
            async with asyncio.timeout(self.body_timeout):
                if length is not None and PREALLOCATE_BYTES <= length <= self.max_input_size:
                    return await _read_exactly(request, length)
                return await request.read()
        except TimeoutError:
            raise errors.RequestTimeout(
                f"the request body did not arrive within {self.body_timeout:g} s "
                "(--http-body-timeout-secs)"
            ) from None

    async def _json_body(self, request: Any, allow_empty: bool = False) -> dict[str, Any]:
        raw = await self._read(request)
        if not raw.strip():
            if allow_empty:
                return {}
            raise errors.InvalidArgument("request body is empty")
        if len(raw) > dataplane.OFFLOAD_BYTES:
            return await asyncio.to_thread(_parse_json, raw)
        return _parse_json(raw)

    def _routes(self) -> None:
        """``self.routes``: (method, path pattern, handler) for every endpoint, the one table
        both HTTP fronts serve (aiohttp's router here; transport/http1.py its own matcher).
        A ``{name}`` segment matches one path segment. Handlers read only ``method``,
        ``path``, ``match_info`` and, through ``_read``, the body of their request."""
        routes: list[tuple[str, str, AnyHandler]] = [
            ("GET", "/v2/health/live", self.live),
            ("GET", "/v2/health/ready", self.ready),
            ("GET", "/v2", self.server_metadata),
            ("GET", "/v2/models/stats", self.all_stats),
        ]
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                ("POST", prefix + "/infer", self.infer),
                ("GET", prefix, self.model_metadata),
                ("GET", prefix + "/ready", self.model_ready),
                ("GET", prefix + "/config", self.model_config),
                ("GET", prefix + "/stats", self.model_stats),
            ]
        for kind in ("systemsharedmemory", "cudasharedmemory"):
            base = f"/v2/{kind}"
            routes += [
                ("GET", base + "/status", self.shm_status),
                ("GET", base + "/region/{region}/status", self.shm_status),
                ("POST", base + "/region/{region}/register", self.shm_register),
                ("POST", base + "/unregister", self.shm_unregister),
                ("POST", base + "/region/{region}/unregister", self.shm_unregister),
            ]
        routes += [
            ("POST", "/v2/repository/index", self.repository_index),
            ("POST", "/v2/repository/models/{model}/load", self.load),
            ("POST", "/v2/repository/models/{model}/unload", self.unload),
        ]
        self.routes = routes
        for method, path, handler in routes:
            self.app.router.add_route(method, path, handler)
            if method == "GET":
                self.app.router.add_route("HEAD", path, handler)

    # -- health and metadata -------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        live = self.core.live()
        return web.json_response({"live": live}, status=200 if live else 503)

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.core.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(self.core.model_metadata(name, version))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        ready = self.core.model_ready(name, version)
        return web.json_response({"name": name, "ready": ready}, status=200 if ready else 503)

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(model_config.to_dict(self.core.model_config(name, version)))

    async def model_stats(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        stats = await self.core.statistics_of_pod(name, version)
        return web.json_response({"model_stats": stats})

    async def all_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"model_stats": await self.core.statistics_of_pod()})

    # -- repository ----------------------------------------------------------------------

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, allow_empty=True)
        ready = bool(body.get("ready", False))
        return web.json_response(self.core.repository_index(ready))

    async def load(self, request: web.Request) -> web.Response:
        body = await self._json_body(request, allow_empty=True)
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise errors.InvalidArgument("'parameters' must be an object")
        size = sum(len(v) for v in params.values() if isinstance(v, str))
        if size > dataplane.OFFLOAD_BYTES:
            files = await asyncio.to_thread(_load_files, params)
        else:
            files = _load_files(params)
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            config = json.dumps(config)
        await self.core.load(request.match_info["model"], config, files)
        return web.json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        await self._json_body(request, allow_empty=True)
        await self.core.unload(request.match_info["model"])
        return web.json_response({})

    # -- shared memory -------------------------------------------------------------------

    async def shm_status(self, request: web.Request) -> web.Response:
        regions = self.core.shm.status(request.match_info.get("region", ""), _shm_kind(request))
        return web.json_response(regions)

    async def shm_register(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        name = request.match_info["region"]
        if _shm_kind(request) == shm.CUDA:
            self.core.shm.register_cuda(
                name, body.get("raw_handle"), body.get("device_id", 0), body.get("byte_size")
            )
            return web.json_response({})
        key = body.get("key")
        if not isinstance(key, str):
            raise errors.InvalidArgument("register needs a string 'key'")
        self.core.shm.register_system(name, key, body.get("offset", 0), body.get("byte_size"))
        return web.json_response({})

    async def shm_unregister(self, request: web.Request) -> web.Response:
        self.core.shm.unregister(request.match_info.get("region", ""), _shm_kind(request))
        return web.json_response({})

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.StreamResponse:
        name, version = _model(request)
        content_type = request.content_type if request.headers.get("Content-Type") else ""
        served = self.admit(name, version, content_type, request.content_length)
        body = await self._read(request)
        header_length = request.headers.get("Inference-Header-Content-Length")
        payload, header_size = await self.answer(served, name, version, body, header_length)
        if header_size is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(
            body=payload,
            headers={"Inference-Header-Content-Length": str(header_size)},
            content_type="application/octet-stream",
        )

    def admit(self, name: str, version: str, content_type: str, content_length: int | None) -> Any:
        """The model version an infer request goes to, or why it is refused, from its
        headers alone: before its body is read. ``content_type`` without parameters."""
        served = self.core.require(name, version)
        if content_type not in _ACCEPTED_TYPES:
            raise errors.InvalidArgument(
                f"unsupported Content-Type '{content_type}': send application/json, or "
                "application/octet-stream with an Inference-Header-Content-Length header"
            )
        if content_length is not None and content_length > self.max_input_size:
            raise errors.PayloadTooLarge(
                f"request body of {content_length} bytes exceeds the limit of "
                f"{self.max_input_size} bytes (--http-max-input-size)"
            )
        return served

    async def answer(
        self,
        served: Any,
        name: str,
        version: str,
        body: bytes | bytearray,
        header_length: str | None,
    ) -> tuple[bytes, int | None]:
        """Run an admitted infer request: the response body, and the length of its JSON
        header when binary data follows (``Inference-Header-Content-Length``)."""
        if header_length is not None and header_length.strip() == "0":
            inputs = await self.core.decode(
                served,
                transport.decode_cost(served.config, 0, len(body)),
                lambda budget: raw_binary_input(served.config, body, budget),
            )
            result = await self.core.infer(name, version, inputs)
            return await self.core.encode(result, lambda: encode_response(result, (True, {})))
        lease = self.core.shm.lease()
        try:
            json_size = len(body)
            if header_length is not None and header_length.strip().isdigit():
                json_size = min(int(header_length), len(body))
            decoded = await self.core.decode(
                served,
                transport.decode_cost(served.config, json_size, len(body) - json_size),
                lambda budget: decode_request(body, header_length, lease, budget),
            )
            inputs, outputs, binary_outputs, params, request_id, placements = decoded
            result = await self.core.infer(
                name, version, inputs, outputs, params, request_id, mirror=not placements
            )
            return await self.core.encode(
                result, lambda: encode_response(result, binary_outputs, placements)
            )
        finally:
            lease.release()


def _load_files(params: dict[str, Any]) -> dict[str, bytes]:
    """The ``file:<version>/<path>`` parameters of a load request, base64-decoded."""
    files: dict[str, bytes] = {}
    for key, value in params.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise errors.InvalidArgument(f"parameter '{key}' must be base64 text")
            try:
                files[key[len("file:") :]] = base64.b64decode(value, validate=True)
            except ValueError as exc:
                raise errors.InvalidArgument(f"parameter '{key}' is not base64: {exc}") from exc
    return files


def _shm_kind(request: web.Request) -> str:
    return shm.CUDA if request.path.startswith("/v2/cudasharedmemory") else shm.SYSTEM


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


async def _read_exactly(request: web.BaseRequest, length: int) -> bytearray:
    """A body of a known length, each chunk copied once into its place: aiohttp's ``read``
    gathers chunks into a bytearray and then copies that into ``bytes``, a second copy of
    every tensor of a large request."""
    body = bytearray(length)
    view = memoryview(body)
    filled = 0
    while filled < length:
        chunk = await request.content.readany()
        if not chunk:
            raise errors.InvalidArgument(
                f"the request body ended after {filled} of its {length} bytes (Content-Length)"
            )
        take = min(len(chunk), length - filled)
        view[filled : filled + take] = chunk[:take]
        filled += take
    return body


def _parse_json(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidArgument(f"malformed JSON in request body: {exc}") from exc
    if not isinstance(doc, dict):
        raise errors.InvalidArgument("request body must be a JSON object")
    return doc


def raw_binary_input(
    config: Any, body: bytes | bytearray, budget: tensors.Budget | None = None
) -> dict[str, tensors.Array]:
    """Triton's raw binary request: the whole body is the one input of batch 1.

    Only for single-input models whose shape follows from the byte count: every dim known,
    or one variable dim; a BYTES input is one element. All outputs come back binary.
    """
    if len(config.input) != 1:
        raise errors.InvalidArgument(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with "
            f"one input; '{config.name}' has {len(config.input)}: send a JSON header"
        )
    tensor = config.input[0]
    datatype = tensors.wire_datatype(model_config.model_config_pb2.DataType.Name(tensor.data_type))
    lead = [1] if config.max_batch_size > 0 else []
    dims = [int(d) for d in tensor.dims]
    if datatype == "BYTES":
        shape = [*lead, *([1] * len(dims))]
        if budget is not None:
            budget.admit(tensor.name, datatype, shape)
            budget.charge(tensor.name, len(body))
        array = np.empty(1, dtype=object)
        array[0] = bytes(body)
        return {tensor.name: array.reshape(shape)}
    itemsize = tensors.DTYPES[datatype].itemsize
    known = tensors.element_count([d for d in dims if d != -1]) * itemsize
    variable = dims.count(-1)
    if variable > 1 or known == 0 or len(body) % known:
        raise errors.InvalidArgument(
            f"input '{tensor.name}': cannot tell a shape from {len(body)} bytes of {datatype} "
            f"for dims {dims}; send a JSON header with the shape"
        )
    shape = [len(body) // known if d == -1 else d for d in dims]
    data = memoryview(body)
    return {tensor.name: tensors.from_raw(tensor.name, data, datatype, [*lead, *shape], budget)}


#: Output name -> True (binary) / False (JSON) / None (follow binary_data_output).
BinaryChoice = dict[str, bool | None]


Decoded = tuple[
    dict[str, tensors.Array],
    list[str],
    tuple[bool, BinaryChoice],
    dict[str, Any],
    str,
    dict[str, shm.Placement],
]


def decode_request(
    body: bytes | bytearray,
    header_length: str | None,
    lease: shm.Lease,
    budget: tensors.Budget | None = None,
) -> Decoded:
    """Parse an infer request body (JSON, or JSON + binary tensors, or shared memory).

    Every input is admitted by ``budget`` (the model's shapes, the request's caps) before
    its data is decoded."""
    doc, binary = _split_body(body, header_length)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise errors.InvalidArgument("'parameters' must be an object")
    inputs = _decode_inputs(doc, binary, lease, budget or tensors.Budget())
    outputs, choices, placements = _decode_outputs(doc, lease)
    default_binary = bool(params.get("binary_data_output", False))
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise errors.InvalidArgument("'id' must be a string")
    return inputs, outputs, (default_binary, choices), params, request_id, placements


def _split_body(
    body: bytes | bytearray, header_length: str | None
) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary data after it (Inference-Header-Content-Length)."""
    if header_length is None:
        return _parse_json(body), memoryview(b"")
    try:
        json_size = int(header_length)
    except ValueError:
        raise errors.InvalidArgument(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from None
    if json_size < 0 or json_size > len(body):
        raise errors.InvalidArgument(
            f"Inference-Header-Content-Length {json_size} is outside the body of {len(body)} bytes"
        )
    return _parse_json(memoryview(body)[:json_size]), memoryview(body)[json_size:]


def _decode_inputs(
    doc: dict[str, Any], binary: memoryview, lease: shm.Lease, budget: tensors.Budget
) -> dict[str, tensors.Array]:
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise errors.InvalidArgument("request needs a non-empty 'inputs' list")
    inputs: dict[str, tensors.Array] = {}
    offset = 0
    for item in raw_inputs:
        name, shape, datatype, in_params = _input_header(item, inputs)
        if "shared_memory_region" in in_params:
            inputs[name] = lease.read(name, in_params, datatype, shape, budget)
        elif "binary_data_size" in in_params:
            size = in_params["binary_data_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise errors.InvalidArgument(
                    f"input '{name}': binary_data_size must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise errors.InvalidArgument(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left); the payload is truncated"
                )
            chunk = binary[offset : offset + size]
            inputs[name] = tensors.from_raw(name, chunk, datatype, shape, budget)
            offset += size
        elif "data" in item:
            inputs[name] = tensors.from_json(name, item["data"], datatype, shape, budget)
        else:
            raise errors.InvalidArgument(
                f"input '{name}' has neither 'data' nor a binary_data_size parameter"
            )
    if offset != len(binary):
        raise errors.InvalidArgument(
            f"{len(binary) - offset} bytes of binary data after the last input; check "
            "binary_data_size and Inference-Header-Content-Length"
        )
    return inputs


def _input_header(
    item: Any, seen: dict[str, tensors.Array]
) -> tuple[str, list[int], str, dict[str, Any]]:
    """An input's name, shape, datatype and parameters, each checked for its JSON type."""
    if not isinstance(item, dict):
        raise errors.InvalidArgument("each input must be an object")
    name = item.get("name")
    shape = item.get("shape")
    datatype = item.get("datatype")
    if not isinstance(name, str) or not name:
        raise errors.InvalidArgument("an input has no 'name'")
    if name in seen:
        raise errors.InvalidArgument(f"input '{name}' appears twice")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise errors.InvalidArgument(f"input '{name}': 'shape' must be a list of integers")
    if not isinstance(datatype, str):
        raise errors.InvalidArgument(f"input '{name}': 'datatype' is missing")
    in_params = item.get("parameters") or {}
    if not isinstance(in_params, dict):
        raise errors.InvalidArgument(f"input '{name}': 'parameters' must be an object")
    return name, shape, datatype, in_params


def _decode_outputs(
    doc: dict[str, Any], lease: shm.Lease
) -> tuple[list[str], BinaryChoice, dict[str, shm.Placement]]:
    outputs: list[str] = []
    choices: BinaryChoice = {}
    placements: dict[str, shm.Placement] = {}
    raw_outputs = doc.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise errors.InvalidArgument("'outputs' must be a list")
    for item in raw_outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise errors.InvalidArgument("each requested output needs a 'name'")
        out_params = item.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise errors.InvalidArgument(f"output '{item['name']}': 'parameters' must be an object")
        if "shared_memory_region" in out_params:
            placements[item["name"]] = lease.place(item["name"], out_params)
        if "classification" in out_params:
            raise errors.Unsupported("the classification extension is not supported")
        outputs.append(item["name"])
        binary_flag = out_params.get("binary_data")
        choices[item["name"]] = None if binary_flag is None else bool(binary_flag)
    return outputs, choices, placements


def encode_response(
    result: dataplane.InferResult,
    binary_outputs: tuple[bool, BinaryChoice],
    placements: dict[str, shm.Placement] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    default_binary, choices = binary_outputs
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in result.outputs.items():
        choice = choices.get(name)
        as_binary = default_binary if choice is None else choice
        entry: dict[str, Any] = {
            "name": name,
            "datatype": tensors.datatype_of(array),
            "shape": list(array.shape),
        }
        placement = placements.get(name) if placements else None
        if placement is not None:
            entry["parameters"] = placement.write(name, array)
        elif as_binary:
            blob = tensors.to_raw(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype in _NUMPY_JSON:
            # orjson writes numpy arrays itself, ~10x faster than building a Python list.
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        else:
            entry["data"] = tensors.to_json(array)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "outputs": outputs,
    }
    if result.id:
        doc["id"] = result.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
