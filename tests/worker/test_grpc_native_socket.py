"""The native gRPC front's private stream socket fits a Unix socket's path however deep TMPDIR
is (the local fleet gives each pod's /tmp a deep folder: a path past 107 bytes cannot bind)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from polyserve_worker.transport import grpc_native


@pytest.mark.parametrize("depth", [1, 12], ids=["shallow", "deep"])
def test_the_stream_socket_binds_whatever_the_depth_of_tmpdir(
    depth: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # short: tmp_path is deep already
    deep = base.joinpath(*["pods-volumes-tmp"] * depth)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    folder = grpc_native.socket_folder()
    try:
        assert folder.folder.startswith(str(deep)), "always in TMPDIR (/tmp may be read-only)"
        path = os.path.join(folder.path, grpc_native.SOCKET_NAME)
        assert len(path.encode()) <= grpc_native.SOCKET_PATH_MAX
        with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
            server.bind(path)
            server.listen()
            client.connect(path)
        assert os.path.exists(os.path.join(folder.folder, grpc_native.SOCKET_NAME))
    finally:
        folder.close()
        shutil.rmtree(base, ignore_errors=True)
    assert not os.path.exists(folder.folder)
