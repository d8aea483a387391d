"""TLS servers of a test's own: a CA and certificates made here, a redis-server and a RabbitMQ node speaking TLS.

The certificates come from the ``cryptography`` package (a dependency of the test
extras, through moto): a CA, a server certificate for ``localhost`` (only),
a client certificate (mutual TLS), and a second CA that signed none of them (the wrong
CA a test gives) but signed a server certificate of its own (a rotation to a certificate
the clients' CA does not vouch for). The redis-server listens on a free TLS port only (``--port 0``). The
RabbitMQ node is a second node of the machine's Erlang, started from the installed
``rabbitmq-server`` with its own node name, config file, data, log and home directories
(its Erlang cookie) and free ports (TLS listener, distribution); its listener requires a
client certificate (``verify_peer``, ``fail_if_no_peer_cert``); it never touches the
machine's own RabbitMQ service, which other tests use. Each is stopped by its process
group. A test fixture, not the runtime: it lives under ``tests/``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsupload.worker.dev.local_services import free_port, wait_until

RABBIT_SBIN = Path("/usr/lib/rabbitmq/bin")
"""Debian's scripts that run a node as the calling user (``/usr/sbin``'s switch to the ``rabbitmq`` user)."""
RABBIT_START = 90.0
"""Seconds a node may take to start on a loaded two-core machine (about 20 s idle)."""


@dataclass(frozen=True)
class Pki:
    """File paths of a test CA and what it signed, plus a CA that signed nothing here."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_server_cert: Path
    """A server certificate for ``localhost`` signed by ``other_ca``: what a bad rotation installs."""
    other_server_key: Path
    both_cas: Path
    """``ca`` and ``other_ca`` in one file: a client that trusts either."""


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server certificate (localhost, 127.0.0.1), a client certificate and another CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write(stem: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o644)  # the RabbitMQ node reads it too
        return cert_path, key_path

    def builder(subject: str, issuer: str, key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def ca(subject: str) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def leaf(subject: str, signer: tuple[x509.Certificate, Any], usage: Any, names: list[Any]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = signer[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        made = (
            builder(subject, str(issuer), key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer[1].public_key()), critical=False)
        )
        if names:
            made = made.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return made.sign(signer[1], hashes.SHA256()), key

    directory.mkdir(parents=True, exist_ok=True)
    root = ca("wsupload test CA")
    ca_path, _ = write("ca", *root)
    server_names = [x509.DNSName("localhost")]  # not 127.0.0.1: a URL naming it shows a host name refused
    server = write("server", *leaf("localhost", root, ExtendedKeyUsageOID.SERVER_AUTH, server_names))
    client = write("client", *leaf("wsupload client", root, ExtendedKeyUsageOID.CLIENT_AUTH, []))
    other_root = ca("a CA the clients do not trust")
    other, _ = write("other-ca", *other_root)
    rotated = write("other-server", *leaf("localhost", other_root, ExtendedKeyUsageOID.SERVER_AUTH, server_names))
    both = directory / "both-cas.crt"
    both.write_bytes(ca_path.read_bytes() + other.read_bytes())
    return Pki(ca_path, server[0], server[1], client[0], client[1], other, rotated[0], rotated[1], both)


@dataclass
class TlsRedis:
    """A redis-server with a TLS port only; ``restart`` brings it back on the same port and data."""

    port: int
    process: subprocess.Popen[bytes]
    directory: Path
    ca: Path
    client_certificates: bool = False

    def url(self, ca: Path | None, *, host: str = "localhost", **options: Path | str) -> str:
        query = "&".join(filter(None, [f"ssl_ca_certs={ca}" if ca else "", *(f"{k}={v}" for k, v in options.items())]))
        return f"rediss://{host}:{self.port}/0" + (f"?{query}" if query else "")

    def stop(self) -> None:
        _stop_group(self.process)

    def restart(self, cert: Path, key: Path) -> None:
        """Stop it and start it again with this certificate and key: same port, same data (its append-only file)."""
        self.stop()
        self.process = _spawn_tls_redis(self.port, self.directory, cert, key, self.ca, self.client_certificates)
        _wait_listening(self)


def start_tls_redis(pki: Pki, directory: Path, *, client_certificates: bool = False) -> TlsRedis:
    """A redis-server on a free TLS port (no plain port); ``client_certificates``: it requires one (mutual TLS).

    Its data is kept in an append-only file in ``directory``, so a ``restart`` keeps the jobs.
    """
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    process = _spawn_tls_redis(port, directory, pki.server_cert, pki.server_key, pki.ca, client_certificates)
    server = TlsRedis(port, process, directory, pki.ca, client_certificates)
    _wait_listening(server)
    return server


def _spawn_tls_redis(
    port: int, directory: Path, cert: Path, key: Path, ca: Path, client_certificates: bool
) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
    args += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "yes" if client_certificates else "no"]
    log = open(directory / "redis.log", "ab")  # the child holds it
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return process


def _wait_listening(server: TlsRedis) -> None:
    process = server.process
    try:
        wait_until(
            lambda: process.poll() is not None or _accepts(server.port), 15, what="the TLS redis-server to listen"
        )
    except TimeoutError:
        server.stop()
        raise
    if process.poll() is not None:
        said = (server.directory / "redis.log").read_text()
        raise RuntimeError(f"redis-server exited with {process.returncode}: {said}")


def rabbit_unavailable_reason() -> str | None:
    """Why a RabbitMQ node of a test's own cannot be started here, or None."""
    if not (RABBIT_SBIN / "rabbitmq-server").exists():
        return f"no {RABBIT_SBIN / 'rabbitmq-server'} (RabbitMQ is not installed)"
    if shutil.which("erl") is None:
        return "no erl on PATH (Erlang is not installed)"
    return None


@dataclass
class TlsRabbit:
    """A RabbitMQ node of a test's own, with a TLS listener only that requires a client certificate
    signed by the test's CA (mutual TLS); guest/guest from localhost."""

    node: str
    port: int
    process: subprocess.Popen[bytes]
    log_dir: Path

    pki: Pki

    def url(self, ca: Path, vhost: str = "%2F", *, client_certificate: bool = True) -> str:
        """An ``amqps://`` URL trusting ``ca``, with the client certificate the node requires unless told not to."""
        mine = f"&ssl_certfile={self.pki.client_cert}&ssl_keyfile={self.pki.client_key}" if client_certificate else ""
        return f"amqps://guest:guest@localhost:{self.port}/{vhost}?ssl_ca_certs={ca}{mine}"

    def stop(self) -> None:
        _stop_group(self.process, timeout=60)

    def log_tail(self, lines: int = 30) -> str:
        texts = [p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log"))]
        return "\n".join("\n".join(texts).splitlines()[-lines:])


def start_tls_rabbit(pki: Pki, directory: Path) -> TlsRabbit:
    """Start a second RabbitMQ node (its own name, ports, config and data) with a mutual-TLS listener."""
    node = f"wsupload-tls-{uuid.uuid4().hex[:8]}@localhost"
    port, dist_port = free_port(), free_port()
    for sub in ("home", "mnesia", "log"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "rabbitmq.conf").write_text(
        "listeners.tcp = none\n"
        f"listeners.ssl.default = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {pki.ca}\n"
        f"ssl_options.certfile = {pki.server_cert}\n"
        f"ssl_options.keyfile = {pki.server_key}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = true\n"
    )
    (directory / "enabled_plugins").write_text("[].\n")
    (directory / "rabbitmq-env.conf").write_text("")  # not the machine's /etc/rabbitmq/rabbitmq-env.conf
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory / "home"),  # its own Erlang cookie
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    out = open(directory / "log" / "console.log", "wb")  # the child holds it
    process = subprocess.Popen(
        [str(RABBIT_SBIN / "rabbitmq-server")],
        env=env,
        cwd=directory,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    server = TlsRabbit(node, port, process, directory / "log", pki)
    try:
        wait_until(lambda: process.poll() is not None or _amqps_answers(server, pki), RABBIT_START, 0.5, "RabbitMQ")
    except TimeoutError as exc:
        server.stop()
        raise TimeoutError(f"{exc}\n{server.log_tail()}") from None
    if process.poll() is not None:
        raise RuntimeError(f"the RabbitMQ node exited with {process.returncode}:\n{server.log_tail()}")
    return server


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _amqps_answers(server: TlsRabbit, pki: Pki) -> bool:
    """The node accepts TLS and an AMQP login (its listener opens before the node is ready)."""
    if not _accepts(server.port):
        return False
    from kombu import Connection

    from wsupload.config.broker_urls import amqp_tls

    plain, options = amqp_tls(server.url(pki.ca))
    try:
        with Connection(plain, ssl=options or False, connect_timeout=2) as connection:
            connection.connect()
        return True
    except Exception:  # not ready yet: refused, reset, or the broker still booting
        return False


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
