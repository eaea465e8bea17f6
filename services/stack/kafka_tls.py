"""A throwaway certificate authority and a broker certificate, for TLS on one machine.

The SASL_SSL broker of the tests (``SecureKafka(tls=...)``) and a developer who wants the
production transport locally get their certificates here, made with ``openssl`` in a few
hundred milliseconds; nothing is downloaded and no password protects the key, which is why the
directory is 0700 and every file in it 0600 (the clients run as the same user).

* ``ca.pem`` — the authority's certificate: what clients trust
  (``CASESTREAM_KAFKA_SSL_CA_LOCATION``, librdkafka's ``ssl.ca.location``, the worker's
  ``ssl.create_default_context(cafile=...)``); the authority's key is deleted once the broker's
  certificate is signed, so nothing else can ever be issued under it.
* ``broker.pem`` — the broker's unencrypted PKCS#8 key followed by its certificate, the shape
  Kafka's ``ssl.keystore.type=PEM`` reads; its subject alternative names are exactly ``hosts``
  (IP addresses as ``IP:``, names as ``DNS:``), so a client that dials any other name is refused.

Production uses the organisation's CA instead: the broker settings are the same
(``ssl.keystore.type=PEM``, ``ssl.keystore.location``), only the files come from elsewhere.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """The files of one throwaway authority (see the module docstring)."""

    ca_cert: Path
    broker_keystore: Path
    hosts: tuple[str, ...]


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def _san(hosts: Sequence[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def make_authority(
    directory: Path,
    hosts: Sequence[str] = ("127.0.0.1",),
    *,
    days: int = 2,
    name: str = "casestream throwaway CA",
) -> TlsFiles:
    """Create a CA under ``directory`` and a broker certificate for ``hosts``, signed by it.

    Valid ``days`` days (two by default: a test's CA must not outlive the test by much).
    """
    if not hosts:
        raise ValueError("make_authority needs at least one host name or IP address")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "broker.key", directory / "broker.csr", directory / "broker.crt"
    ext = directory / "broker.ext"
    ext.write_text(
        f"subjectAltName={_san(hosts)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-days", str(days),
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={hosts[0]}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", str(days), "-sha256",
        "-extfile", str(ext), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    keystore = directory / "broker.pem"
    keystore.touch(mode=0o600)
    keystore.write_text(key.read_text() + cert.read_text() + ca_cert.read_text())
    for leftover in (ca_key, key, csr, ext):
        leftover.unlink()
    for path in directory.iterdir():
        path.chmod(0o600)
    return TlsFiles(ca_cert=ca_cert, broker_keystore=keystore, hosts=tuple(hosts))
