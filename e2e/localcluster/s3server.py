"""A real S3 server for tests: versitygw (github.com/versity/versitygw, Apache-2.0), built from
Go modules (group `versitygw`), its posix backend on a directory of the caller's.

    server = s3server.start(tmp_path / "s3")            # http on 127.0.0.1:<free port>
    server = s3server.start(tmp_path / "s3", tls=True)  # https, a self-signed CA in .ca_bundle
    server.endpoint, server.access_key, server.secret_key, server.data_dir
    server.stop()

With the posix backend an object is a plain file: `<data_dir>/<bucket>/<key>`, so a test can
corrupt a stored object by writing that file. The root account is `.access_key`/`.secret_key`; the
server's internal IAM keeps other accounts in `<dir>/iam` (`add_user` creates one).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .build import ensure_binaries
from .versions import bin_dir, load_versions

READY_TIMEOUT_S = 30.0


def binary(version: str | None = None) -> Path:
    """~/.cache/flotilla/bin/versitygw-<v>/versitygw (built on demand by `start`)."""
    return bin_dir("versitygw", version or load_versions().versitygw) / "versitygw"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `host` signed by it: (ca.crt, server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flotilla test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital_signature, key_cert_sign, crl_sign
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    with contextlib.suppress(ValueError):
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.crt", directory / "server.crt", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass
class S3Server:
    directory: Path
    port: int
    access_key: str
    secret_key: str
    tls: bool = False
    ca_bundle: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The posix backend's root: bucket B's object K is the file data_dir/B/K."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "versitygw.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> object:
        """A boto3 S3 client for this server (path-style, the CA trusted)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            verify=str(self.ca_bundle) if self.ca_bundle else None,
            config=Config(s3={"addressing_style": "path"}),
        )

    def add_user(self, access_key: str, secret_key: str, role: str = "user") -> None:
        """Another account in the server's internal IAM (`versitygw admin create-user`). Role
        `user` reaches only the buckets it owns: the root's buckets answer it AccessDenied."""
        argv = [str(binary()), "admin", "--access", self.access_key, "--secret", self.secret_key]
        argv += ["--endpoint-url", self.endpoint]
        if self.tls:
            argv.append("--allow-insecure")
        argv += ["create-user", "--access", access_key, "--secret", secret_key, "--role", role]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"versitygw admin create-user: {proc.stdout}{proc.stderr}")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "iam").mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary()),
            "--access",
            self.access_key,
            "--secret",
            self.secret_key,
            "--port",
            f"127.0.0.1:{self.port}",
            "--iam-dir",
            str(self.directory / "iam"),
            "--quiet",
        ]
        if self.tls:
            _, cert, key = self_signed(self.directory / "tls")
            argv += ["--cert", str(cert), "--key", str(key)]
        argv += ["posix", str(self.data_dir)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"versitygw exited with {self.process.returncode}: {self.log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"versitygw did not listen on {self.port} within {READY_TIMEOUT_S}s: {self.log()[-2000:]}")

    def restart(self) -> None:
        """Start again after stop(), same port, same data."""
        if self.process is None or self.process.poll() is not None:
            self._start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()


def start(directory: Path, *, tls: bool = False, port: int | None = None) -> S3Server:
    """versitygw on 127.0.0.1 (a free port unless given), posix backend under `directory`/data.
    With tls=True it serves https with a certificate of a fresh CA, whose PEM is `.ca_bundle`."""
    ensure_binaries(only=["versitygw"])
    directory.mkdir(parents=True, exist_ok=True)
    server = S3Server(
        directory=directory,
        port=port or free_port(),
        access_key=os.environ.get("FLOTILLA_TEST_S3_ACCESS_KEY", "flotilla-root"),
        secret_key=os.environ.get("FLOTILLA_TEST_S3_SECRET_KEY", uuid.uuid4().hex),
        tls=tls,
    )
    if tls:
        server.ca_bundle = directory / "tls" / "ca.crt"
    server._start()
    return server
