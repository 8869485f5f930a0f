"""Real certificates for tests: a CA and server certificates it signs, made with the openssl
CLI (the ``cryptography`` package is not a dependency), written as cert-manager writes a
Secret: ``tls.crt``, ``tls.key`` and ``ca.crt`` in one folder. A test that needs them skips
when openssl is missing."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def _openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        pytest.skip("the openssl CLI is not installed (apt-get install openssl)")
    return found


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([_openssl(), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Issued:
    """A server certificate in cert-manager's layout: ``folder/{tls.crt,tls.key,ca.crt}``."""

    folder: Path

    @property
    def cert(self) -> Path:
        return self.folder / "tls.crt"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"


def authority(folder: Path, name: str = "polyserve-test-ca") -> Authority:
    """A new self-signed CA in ``folder`` (valid for a day; EC P-256, quick to make)."""
    folder.mkdir(parents=True, exist_ok=True)
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return Authority(folder / "ca.crt", folder / "ca.key")


def issue(
    ca: Authority, folder: Path, names: list[str], name: str = "server", usage: str = "serverAuth"
) -> Issued:
    """A certificate for ``names`` (DNS names or IP addresses) signed by ``ca``, written to
    ``folder`` with the CA's certificate beside it: a server's, or a client's with
    ``usage="clientAuth"``."""
    folder.mkdir(parents=True, exist_ok=True)
    sans = []
    for entry in names:
        try:
            ipaddress.ip_address(entry)
        except ValueError:
            sans.append(f"DNS:{entry}")
        else:
            sans.append(f"IP:{entry}")
    work = folder / f".{name}-work"
    work.mkdir(exist_ok=True)
    (work / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={','.join(sans)}\n"
    )
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={names[0]}",
        cwd=work,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", "tls.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", "tls.crt", "-days", "1", "-extfile", "ext.cnf",
        cwd=work,
    )  # fmt: skip
    # Replaced whole, as the kubelet swaps a Secret's files (a reader never sees half).
    for file in ("tls.crt", "tls.key"):
        (work / file).replace(folder / file)
    shutil.copyfile(ca.cert, folder / "ca.crt.new")
    (folder / "ca.crt.new").replace(folder / "ca.crt")
    shutil.rmtree(work)
    return Issued(folder)
