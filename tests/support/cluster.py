"""A private three-broker Kafka cluster (KRaft, every node broker and controller) on loopback,
for fault tests that kill and restart brokers: replication factor 3, min.insync.replicas 2.

It uses the jars deploy/stack.sh fetched into .cache/ (run `deploy/stack.sh up` once).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support.instances import ROOT, _free_port

_CONFIG = """process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=4
default.replication.factor=3
min.insync.replicas=2
auto.create.topics.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
log.segment.bytes=67108864
"""


def _kafka_libs() -> Path:
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    version = pom.split("<kafka.version>")[1].split("</kafka.version>")[0]
    cache = Path(os.environ.get("STREAMSEG_CACHE_DIR", ROOT / ".cache"))
    libs = cache / f"kafka-{version}" / "libs"
    if not libs.is_dir():
        raise RuntimeError(f"no Kafka jars in {libs}: run `bash deploy/stack.sh up` once")
    return libs


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Broker:
    node: int
    port: int
    controller_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    # Where this start's lines begin in server.log: an earlier start's "started" must not count.
    log_offset: int = 0


class KafkaCluster:
    """Three brokers; `kill(i)` is kill -9 of one, `start(i)` brings it back with its data."""

    def __init__(self, directory: Path, heap: str = "384m") -> None:
        self.directory = directory
        self.libs = _kafka_libs()
        self.heap = heap
        self.brokers = []
        for node in (1, 2, 3):
            port = _free_port(pair=True)
            self.brokers.append(Broker(node, port, port + 1, directory / f"broker-{node}"))
        self.bootstrap = ",".join(f"127.0.0.1:{b.port}" for b in self.brokers)

    def _java(self, broker: Broker) -> list[str]:
        return [
            "java",
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={ROOT / 'deploy' / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={broker.directory}",
            "-cp",
            f"{self.libs}/*",
        ]

    def format(self) -> None:
        cluster_id = subprocess.run(
            ["java", "-cp", f"{self.libs}/*", "kafka.tools.StorageTool", "random-uuid"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip() or str(uuid.uuid4())
        voters = ",".join(f"{b.node}@127.0.0.1:{b.controller_port}" for b in self.brokers)
        for b in self.brokers:
            b.directory.mkdir(parents=True, exist_ok=True)
            props = b.directory / "server.properties"
            props.write_text(
                _CONFIG.format(
                    node=b.node,
                    voters=voters,
                    port=b.port,
                    controller=b.controller_port,
                    data=b.directory / "data",
                )
            )
            subprocess.run(
                [
                    *self._java(b),
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                ],
                check=True,
                capture_output=True,
            )

    def start(self, index: int) -> None:
        b = self.brokers[index]
        log_path = b.directory / "server.log"
        b.log_offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            b.proc = subprocess.Popen(
                [*self._java(b), "kafka.Kafka", str(b.directory / "server.properties")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, index: int, timeout: float = 90.0) -> None:
        b = self.brokers[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b.proc is not None and b.proc.poll() is not None:
                raise RuntimeError(f"broker {b.node} exited; read {b.directory}/server.log")
            with (b.directory / "server.log").open("rb") as f:
                f.seek(b.log_offset)
                log = f.read().decode(errors="replace")
            if _port_open(b.port) and "Kafka Server started" in log:
                return
            time.sleep(0.3)
        raise TimeoutError(f"broker {b.node} not ready; read {b.directory}/server.log")

    def kill(self, index: int) -> None:
        b = self.brokers[index]
        if b.proc is not None and b.proc.poll() is None:
            os.kill(b.proc.pid, signal.SIGKILL)
            b.proc.wait()

    def up(self) -> None:
        """Start every broker that is not running; wait until all are ready."""
        for i, b in enumerate(self.brokers):
            if b.proc is None or b.proc.poll() is not None:
                self.start(i)
        for i in range(len(self.brokers)):
            self.wait_ready(i)

    def down(self) -> None:
        for b in self.brokers:
            if b.proc is not None and b.proc.poll() is None:
                b.proc.terminate()
        for b in self.brokers:
            if b.proc is not None:
                try:
                    b.proc.wait(30)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        b.proc.kill()
                    b.proc.wait()


@contextmanager
def kafka_cluster(directory: Path) -> Iterator[KafkaCluster]:
    """A formatted, running three-broker cluster, stopped afterwards whatever happened."""
    cluster = KafkaCluster(directory)
    cluster.format()
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()
