"""The native stack (`make up`) must not be reachable from the network: Kafka (client and
controller listeners), PostgreSQL and Elasticsearch (HTTP and transport) listen on loopback only.
Read from the kernel's socket tables (/proc/net/tcp, tcp6), the same data `ss -ltn` shows."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from blog_testkit import Stack

TCP_LISTEN = "0A"
# The servers' second ports, which no client address names (deploy/local/stack.conf defaults,
# overridable from the environment the same way).
KAFKA_CONTROLLER_PORT = int(os.environ.get("KAFKA_CONTROLLER_PORT", "9093"))
ES_TRANSPORT_PORT = int(os.environ.get("ES_TRANSPORT_PORT", "9300"))

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_proc_address(hex_address: str) -> Address:
    """/proc/net/tcp* print an address as 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_sockets() -> list[tuple[Address, int]]:
    sockets = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != TCP_LISTEN:
                continue
            address, port = local.split(":")
            sockets.append((parse_proc_address(address), int(port, 16)))
    return sockets


def is_loopback(address: Address) -> bool:
    # Java listens on IPv6 sockets: 127.0.0.1 shows up as ::ffff:127.0.0.1.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def test_proc_address_parsing() -> None:
    assert parse_proc_address("0100007F") == ipaddress.ip_address("127.0.0.1")
    assert parse_proc_address("00000000") == ipaddress.ip_address("0.0.0.0")
    mapped = parse_proc_address("0000000000000000FFFF00000100007F")
    assert mapped == ipaddress.ip_address("::ffff:127.0.0.1")
    assert is_loopback(mapped)
    assert is_loopback(parse_proc_address("00000000000000000000000001000000"))  # ::1
    assert not is_loopback(parse_proc_address("00000000000000000000000000000000"))  # ::
    assert not is_loopback(ipaddress.ip_address("::ffff:10.0.0.1"))


@pytest.mark.integration
def test_stack_listens_on_loopback_only(stack: Stack) -> None:
    if not os.environ.get("BLOG_KAFKA_BOOTSTRAP"):
        pytest.skip("not the native stack (containers publish their own ports)")
    ports = {
        "kafka": int(stack.kafka_bootstrap.rsplit(":", 1)[1]),
        "kafka controller": KAFKA_CONTROLLER_PORT,
        "postgresql": urlsplit(stack.postgres_dsn).port or 5432,
        "elasticsearch": urlsplit(stack.es_url).port or 9200,
        "elasticsearch transport": ES_TRANSPORT_PORT,
    }
    sockets = listening_sockets()
    for server, port in ports.items():
        bound = [address for address, listening_port in sockets if listening_port == port]
        assert bound, f"{server}: nothing listens on port {port}; is the native stack up?"
        exposed = [str(address) for address in bound if not is_loopback(address)]
        assert not exposed, f"{server} listens on port {port} beyond loopback: {exposed}"
