"""Throwaway certificates for TLS tests, made with the `openssl` command line.

Two CAs: `ca` signs a server certificate for 127.0.0.1 (and localhost) and a client certificate;
`other_ca` signs nothing we use, so trusting it instead is "the wrong CA". EC P-256 keys keep
generation fast (about 50 ms for the whole set).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CA_CONFIG = """[req]
distinguished_name = dn
x509_extensions = ca_ext
prompt = no
[dn]
CN = {name}
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""
_LEAF_EXT = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
extendedKeyUsage={usage}
subjectAltName={san}
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate signed by other_ca: the agent must refuse it
    stranger_key: Path

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        """What a Consul agent with verify_incoming (and our CA as ca_file) would do."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert, cnf = directory / f"{name}.key", directory / f"{name}.pem", directory / f"{name}.cnf"
    cnf.write_text(_CA_CONFIG.format(name=name))
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=directory)
    _openssl("req", "-x509", "-new", "-config", cnf, "-key", key, "-days", "2", "-sha256", "-out", cert,
             cwd=directory)
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], usage: str, san: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem", ".ext"))
    ext.write_text(_LEAF_EXT.format(usage=usage, san=san))
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=directory)
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr, cwd=directory)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "2",
             "-sha256", "-extfile", ext, "-out", cert, cwd=directory)
    key.chmod(0o600)
    return cert, key


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "mesh-test-ca")
    other = _ca(directory, "other-ca")
    server = _leaf(directory, "server.dc1.consul", ca, "serverAuth", "IP:127.0.0.1,DNS:localhost")
    client = _leaf(directory, "mesh-node", ca, "clientAuth", "DNS:mesh-node")
    stranger = _leaf(directory, "stranger", other, "clientAuth", "DNS:stranger")
    return Pki(ca=ca[0], other_ca=other[0], server_cert=server[0], server_key=server[1],
               client_cert=client[0], client_key=client[1], stranger_cert=stranger[0], stranger_key=stranger[1])
