"""`polyserve-worker fetch`: real files, a real HTTP server on 127.0.0.1 port 0."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from polyserve_worker import fetching

MODEL = b"\x08\x07onnx-bytes" * 1000


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "resnet" / "v7").mkdir(parents=True)
    (root / "resnet" / "v7" / "model.onnx").write_bytes(MODEL)
    (root / "resnet" / "v7" / "labels.txt").write_text("cat\ndog\n")
    return root


@pytest.fixture()
def http_store(store: Path) -> Iterator[str]:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(store))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http-store", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_a_file_uri_single_file_keeps_its_name(store: Path, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "resnet" / "1"
    uri = f"file://{store}/resnet/v7/model.onnx"
    assert fetching.main([uri, str(dest)], env={}) == 0
    assert (dest / "model.onnx").read_bytes() == MODEL
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx"]


def test_a_directory_is_copied_whole(store: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    assert fetching.main([f"file://{store}/resnet/v7", str(dest)], env={}) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["labels.txt", "model.onnx"]


def test_a_pvc_uri_reads_the_mounted_claim(store: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    env = {"POLYSERVE_FETCH_PVC_ROOT": str(store.parent)}
    assert fetching.main([f"pvc://{store.name}/resnet/v7/model.onnx", str(dest)], env=env) == 0
    assert (dest / "model.onnx").read_bytes() == MODEL


def test_an_http_artifact_is_downloaded(http_store: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    digest = hashlib.sha256(MODEL).hexdigest()
    uri = f"{http_store}/resnet/v7/model.onnx"
    assert fetching.main([uri, str(dest), "--sha256", digest], env={}) == 0
    assert (dest / "model.onnx").read_bytes() == MODEL


def test_a_digest_mismatch_fails_and_leaves_no_file(
    store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = tmp_path / "out"
    uri = f"file://{store}/resnet/v7/model.onnx"
    with caplog.at_level(logging.ERROR):
        assert fetching.main([uri, str(dest), "--sha256", "0" * 64], env={}) == 1
    assert "update artifact.digest" in caplog.text
    assert list(dest.iterdir()) == []


def test_a_missing_artifact_says_to_check_the_uri(
    http_store: str, store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert fetching.main([f"file://{store}/nope.onnx", str(tmp_path / "a")], env={}) == 1
        assert fetching.main([f"{http_store}/nope.onnx", str(tmp_path / "b")], env={}) == 1
    assert caplog.text.count("not found; check artifact.uri") == 2


def test_an_unknown_scheme_lists_the_supported_ones(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert fetching.main(["ftp://host/model.onnx", "/tmp/unused"], env={}) == 1
    assert "use s3://, gs://, http(s)://, pvc://CLAIM/PATH or file://" in caplog.text


def test_cloud_credentials_and_endpoints_come_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "gcs.json").write_text("{}")
    _, path, options = fetching.resolve(
        "gs://bucket/m/model.plan", {"POLYSERVE_FETCH_SECRET_DIR": str(tmp_path)}
    )
    assert (path, options) == ("bucket/m/model.plan", {"token": str(tmp_path / "gcs.json")})
    protocol, path, options = fetching.resolve(
        "s3://bucket/m", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    )
    assert (protocol, path, options) == (
        "s3",
        "bucket/m",
        {"endpoint_url": "http://127.0.0.1:9000"},
    )


def test_configure_puts_each_config_where_the_repository_layout_wants_it(tmp_path: Path) -> None:
    source = tmp_path / "config"
    source.mkdir()
    (source / "mlp.pbtxt").write_text('name: "mlp"\n')
    (source / "pipeline.pbtxt").write_text('name: "pipeline"\n')
    repository = tmp_path / "models"
    (repository / "mlp" / "1").mkdir(parents=True)
    assert fetching.configure_main([str(source), str(repository)]) == 0
    assert (repository / "mlp" / "config.pbtxt").read_text() == 'name: "mlp"\n'
    assert (repository / "pipeline" / "config.pbtxt").read_text() == 'name: "pipeline"\n'


def test_configure_fails_when_the_config_volume_is_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config").mkdir()
    assert fetching.configure_main([str(tmp_path / "config"), str(tmp_path / "models")]) == 1
    assert "holds no <model>.pbtxt file" in caplog.text
