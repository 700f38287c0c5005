"""Private PostgreSQL, Redis and Kafka that speak only TLS (and SASL, for Kafka), with a CA and
certificates made by `openssl` for the test: what a managed service looks like from here.

- PostgreSQL: `ssl=on`, and pg_hba refuses every connection that is not TLS (`hostnossl
  ... reject`); passwords are checked (scram-sha-256).
- Redis: a TLS port only (`--port 0`), with a password.
- Kafka 4.x, one KRaft node: a SASL_SSL listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; the
  SCRAM users are made by `kafka-storage format --add-scram`) and an SSL listener that
  requires a client certificate (mutual TLS), which the broker also uses for itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import _kafka_libs, _port_open
from tests.support.instances import ROOT, _as_pg_owner, _free_port, _pg_bin

SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1"
KAFKA_USER = "streamseg"
KAFKA_PASSWORD = "kafka-Secret-1"
PG_PASSWORD = "pg-Secret-1"
REDIS_PASSWORD = "redis-Secret-1"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and a
    second CA that signed none of them (to prove verification can fail)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def other_ca(self) -> Path:
        return self.directory / "other-ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"


def make_certificates(directory: Path) -> Certificates:
    """Write the CA and certificates into `directory` (readable by every user, so that the
    servers' own accounts can read them)."""
    directory.mkdir(parents=True, exist_ok=True)
    days = "2"
    for ca in ("ca", "other-ca"):
        _openssl(
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", days),
            *("-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN=StreamSeg test {ca}"),
            cwd=directory,
        )
    (directory / "san.cnf").write_text(SAN + "\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=streamseg-client")):
        _openssl(
            *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key"),
            *("-out", f"{name}.csr", "-subj", subject),
            cwd=directory,
        )
        _openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-out", f"{name}.crt", "-days", days, "-extfile", "san.cnf"),
            cwd=directory,
        )
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)
    return Certificates(directory)


def _own_directory(prefix: str) -> Path:
    """A directory outside pytest's (which other sessions reset to 0700), reachable by the
    unprivileged account PostgreSQL runs as."""
    own = Path(tempfile.mkdtemp(prefix=prefix))
    own.chmod(0o755)
    return own


def _wait(ready: Callable[[], bool], what: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise TimeoutError(f"{what} not ready within {timeout:g}s; {log}:\n{tail}")


# ---------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class TlsPostgres:
    port: int
    user: str = "streamseg"
    password: str = PG_PASSWORD
    database: str = "streamseg"

    def url(self, *, password: bool = True) -> str:
        auth = f"{self.user}:{self.password}" if password else self.user
        return f"postgresql+asyncpg://{auth}@127.0.0.1:{self.port}/{self.database}"


@contextmanager
def tls_postgres(certs: Certificates, logs: Path) -> Iterator[TlsPostgres]:
    """A private PostgreSQL that accepts only TLS connections with a password."""
    own = _own_directory("streamseg-tls-pg-")
    owner = os.environ.get("STREAMSEG_PG_OS_USER", "streamseg")
    data, log = own / "data", own / "postgres.log"
    if os.getuid() == 0:
        shutil.chown(own, owner)
    bin_ = _pg_bin()
    port = _free_port()
    try:
        subprocess.run(
            [
                *_as_pg_owner(),
                f"{bin_}/initdb",
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ],
            check=True,
            capture_output=True,
        )
        # PostgreSQL wants its key owned by its own account and not readable by others.
        for src, dst in ((certs.server_cert, "server.crt"), (certs.server_key, "server.key")):
            shutil.copy(src, data / dst)
            (data / dst).chmod(0o600)
            if os.getuid() == 0:
                shutil.chown(data / dst, owner)
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all 127.0.0.1/32 reject\n"
        )
        options = (
            f"-p {port} -k {own} -c listen_addresses=127.0.0.1 -c max_connections=100"
            " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
            " -c password_encryption=scram-sha-256 -c fsync=off"
        )
        subprocess.run(
            [
                *_as_pg_owner(),
                f"{bin_}/pg_ctl",
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                f"{bin_}/psql",
                "-q",
                "-h",
                str(own),
                "-p",
                str(port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"CREATE ROLE streamseg LOGIN PASSWORD '{PG_PASSWORD}'",
                "-c",
                "CREATE DATABASE streamseg OWNER streamseg",
            ],
            check=True,
            capture_output=True,
        )
        yield TlsPostgres(port)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*_as_pg_owner(), f"{bin_}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
        logs.mkdir(parents=True, exist_ok=True)
        if log.exists():
            shutil.copy2(log, logs / "tls-postgres.log")
        shutil.rmtree(own, ignore_errors=True)


# ---------------------------------------------------------------- Redis


@dataclass(frozen=True)
class TlsRedis:
    port: int
    password: str = REDIS_PASSWORD

    def url(self, db: int = 0) -> str:
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/{db}"


@contextmanager
def tls_redis(certs: Certificates, logs: Path) -> Iterator[TlsRedis]:
    """A private Redis listening on a TLS port only, with a password."""
    port = _free_port()
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "tls-redis.log"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log),
            "--dir",
            str(logs),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: proc.poll() is None and _port_open(port), "TLS Redis", log)
        yield TlsRedis(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- Kafka

_KAFKA_CONFIG = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{ssl},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{ssl}
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
user_{user}="{password}";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
log.dirs={data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


@dataclass(frozen=True)
class SecureKafka:
    sasl_port: int
    ssl_port: int
    user: str = KAFKA_USER
    password: str = KAFKA_PASSWORD

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"


@contextmanager
def secure_kafka(certs: Certificates, logs: Path, heap: str = "384m") -> Iterator[SecureKafka]:
    """One KRaft node with a SASL_SSL and a mutual-TLS listener; stopped afterwards."""
    libs = _kafka_libs()
    own = _own_directory("streamseg-tls-kafka-")
    sasl, ssl_port = _free_port(), _free_port(pair=True)
    controller = ssl_port + 1
    keystore = own / "server-keystore.pem"
    keystore.write_text(certs.server_key.read_text() + certs.server_cert.read_text())
    props = own / "server.properties"
    props.write_text(
        _KAFKA_CONFIG.format(
            controller=controller,
            sasl=sasl,
            ssl=ssl_port,
            user=KAFKA_USER,
            password=KAFKA_PASSWORD,
            keystore=keystore,
            ca=certs.ca,
            data=own / "data",
        )
    )
    java = [
        "java",
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={ROOT / 'deploy' / 'kafka' / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={own}",
        "-cp",
        f"{libs}/*",
    ]
    scram = [
        arg
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        for arg in ("--add-scram", f"{mechanism}=[name={KAFKA_USER},password={KAFKA_PASSWORD}]")
    ]
    subprocess.run(
        [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            str(uuid.uuid4()),
            "-c",
            str(props),
            *scram,
        ],
        check=True,
        capture_output=True,
    )
    log = own / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*java, "kafka.Kafka", str(props)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the TLS Kafka exited; {log}:\n{log.read_text()[-3000:]}")
            return _port_open(sasl) and "Kafka Server started" in log.read_text(errors="replace")

        _wait(ready, "TLS Kafka", log)
        yield SecureKafka(sasl, ssl_port)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        logs.mkdir(parents=True, exist_ok=True)
        if log.exists():
            shutil.copy2(log, logs / "tls-kafka-server.log")
        shutil.rmtree(own, ignore_errors=True)
