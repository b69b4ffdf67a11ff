"""Outbound-only sites (`reachable = false`): they bind nothing, dial their reachable
neighbours, and get every answer and push over the connections they opened. Manifest and
config checks, CurveZMQ transports on loopback (with a real SOCKS5 proxy in between), and a
federation of real node processes in which one site has no listening socket at all."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from nodes.cli import main as node_cli
from nodes.site import SiteConfig
from scenarios.config import ScenarioConfig
from scenarios.federation import create_federation
from swarm.errors import ConfigError, ManifestError
from swarm.manifest import Member, check_reachability
from swarm.transport.zap import ZapAuthenticator
from swarm.transport.zeromq import Curve, ZmqTransport, free_tcp_ports
from tests.conftest import SMALL_SCENARIO, kill_survivors, merged_peers, stop_processes

ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# -- manifest and configuration ------------------------------------------------------------------


def test_an_outbound_only_card_has_no_endpoint_and_reachable_cards_keep_their_old_form():
    reachable = Member("hospital-a", b"\x01" * 32, "a" * 40, "tcp://10.0.0.5:7000")
    outbound = Member("hospital-b", b"\x02" * 32, "b" * 40, None)
    assert set(reachable.card()) == {"name", "signing_key", "transport_key", "endpoint"}  # manifest bytes unchanged
    assert outbound.card()["reachable"] is False and "endpoint" not in outbound.card()
    assert Member.from_card(outbound.card(), "m") == outbound and not outbound.reachable
    with pytest.raises(ManifestError, match="m.reachable: only false"):
        Member.from_card(outbound.card() | {"reachable": True}, "m")
    with pytest.raises(ManifestError, match="reachable.*false instead of an endpoint"):
        Member.from_card(outbound.card() | {"endpoint": "tcp://10.0.0.6:7000"}, "m")


def test_the_manifest_check_refuses_outbound_only_sites_that_could_not_connect():
    line = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    check_reachability({"a", "c"}, line)  # both dial b
    with pytest.raises(ManifestError, match=r"neighbours\.a: a is outbound-only .* has no reachable neighbour; give it a neighbour"):
        check_reachability({"a", "b"}, line)
    ring = {"a": ["b", "d"], "b": ["a", "c"], "c": ["b", "d"], "d": ["c", "a"]}
    with pytest.raises(ManifestError, match=r"neighbours\.a: a and b are both outbound-only .* list explicit neighbours"):
        check_reachability({"a", "b"}, ring)


def test_site_toml_and_init_say_what_an_outbound_only_site_may_not_have(tmp_path):
    config = SiteConfig.from_dict({"site": {"name": "h"}, "node": {"reachable": False, "socks_proxy": "proxy.local:1080"}, "data": {}})
    assert config.endpoint is None and config.listen is None and config.socks_proxy == "proxy.local:1080"
    assert SiteConfig.from_dict({"site": {"name": "h"}, "node": {"reachable": False}, "data": {}}).to_toml().count("reachable = false") == 1
    with pytest.raises(ConfigError, match="node.endpoint: an outbound-only site"):
        SiteConfig.from_dict({"site": {"name": "h"}, "node": {"reachable": False, "endpoint": "tcp://1.2.3.4:7000"}, "data": {}})
    with pytest.raises(ConfigError, match="node.socks_proxy: 'socks5://x' is not host:port"):
        SiteConfig.from_dict({"site": {"name": "h"}, "node": {"endpoint": "tcp://1.2.3.4:7000", "socks_proxy": "socks5://x"}, "data": {}})
    runner = CliRunner()
    result = runner.invoke(node_cli, ["init", "--site", str(tmp_path / "s"), "--name", "h", "--outbound-only", "--data-site", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s" / "member.json").read_text())["reachable"] is False
    result = runner.invoke(node_cli, ["init", "--site", str(tmp_path / "t"), "--name", "h", "--outbound-only", "--endpoint", "tcp://1.2.3.4:7000"])
    assert result.exit_code == 2 and "--outbound-only: an outbound-only site listens nowhere" in result.output
    result = runner.invoke(node_cli, ["init", "--site", str(tmp_path / "u"), "--name", "h"])
    assert result.exit_code == 2 and "--endpoint: required" in result.output


def test_a_scenario_with_two_neighbouring_outbound_only_sites_is_refused(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SMALL_SCENARIO.format(nodes=4, rounds=2, topology="ring", name="s").replace("timeout = 120", "timeout = 120\noutbound_only = [0, 1]"))
    with pytest.raises(ConfigError, match="scenario.outbound_only: site 0 and site 1 are both outbound-only"):
        ScenarioConfig.load(path)


# -- transports on loopback ------------------------------------------------------------------------


class Socks5Proxy:
    """A minimal SOCKS5 proxy (no authentication, CONNECT only) that records where it connected."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connected: list[tuple[str, int]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = client.recv(n - len(data))
                if not chunk:
                    raise ConnectionError
                data += chunk
            return data

        try:
            _version, methods = exactly(2)
            exactly(methods)
            client.sendall(b"\x05\x00")
            _version, command, _, kind = exactly(4)
            if kind == 1:
                host = socket.inet_ntoa(exactly(4))
            else:
                host = exactly(exactly(1)[0]).decode()
            (port,) = struct.unpack("!H", exactly(2))
            assert command == 1
            upstream = socket.create_connection((host, port))
            self.connected.append((host, port))
            client.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("0.0.0.0") + b"\x00\x00")
        except (ConnectionError, OSError, AssertionError):
            client.close()
            return
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def exchange(transports: dict[str, ZmqTransport], sender: str, peer: str, payload: bytes, seconds: float = 20.0) -> None:
    """Send until queued (IMMEDIATE, and a route learned from a hello), then receive it at
    `peer`; every transport keeps receiving meanwhile, so hellos go out."""
    deadline = time.monotonic() + seconds
    while not transports[sender].send(peer, [payload]):
        assert time.monotonic() < deadline, f"{sender} never got a way to {peer}"
        for transport in transports.values():
            transport.receive(0.02)
    while True:
        assert time.monotonic() < deadline, f"{peer} never received {payload!r}"
        received = transports[peer].receive(0.05)
        if received is not None:
            assert received.peer == sender and received.rejected is None and bytes(received.frames[0]) == payload
            return
        for name, transport in transports.items():
            if name != peer:
                transport.receive(0.0)


@pytest.fixture
def curve_pair():
    """hub (reachable) and out (outbound-only), each other's only neighbour, under CurveZMQ."""
    context = zmq.Context()
    auth = ZapAuthenticator(context).start()
    keys = {name: zmq.curve_keypair() for name in ("hub", "out")}
    [port] = free_tcp_ports("127.0.0.1", 1)
    endpoint = f"tcp://127.0.0.1:{port}"
    made: list[ZmqTransport] = []

    def make(name: str, socks_proxy: str | None = None) -> ZmqTransport:
        other = "out" if name == "hub" else "hub"
        curve = Curve(keys[name][0], keys[name][1], {other: keys[other][0].decode()}, auth)
        listen, peers = (endpoint, {"out": None}) if name == "hub" else (None, {"hub": endpoint})
        made.append(ZmqTransport(name, listen, peers, context=context, curve=curve, socks_proxy=socks_proxy).open())
        return made[-1]

    yield make
    for transport in made:
        transport.close()
    auth.stop()
    context.term()


def test_the_reachable_side_answers_over_the_connection_the_outbound_side_opened(curve_pair):
    hub, out = curve_pair("hub"), curve_pair("out")
    assert out.router is None and out.listen is None  # nothing bound
    both = {"hub": hub, "out": out}
    exchange(both, "hub", "out", b"pushed before out said anything")  # the hello made out's connection known
    exchange(both, "out", "hub", b"a request")
    exchange(both, "hub", "out", b"the reply")
    assert hub.bytes_received["out"] == len(b"a request") and out.bytes_received["hub"] == len(b"pushed before out said anything") + len(b"the reply")
    assert out.connected("hub") and hub.connected("out")
    # The hub restarts: the outbound side sees the connection go, reconnects, and its next
    # hello makes the new connection known.
    hub.close()
    deadline = time.monotonic() + 20
    while out.connected("hub"):
        assert time.monotonic() < deadline, "the DEALER still says connected to a closed peer"
        out.receive(0.05)
    hub = curve_pair("hub")
    exchange({"hub": hub, "out": out}, "hub", "out", b"after the restart")


def test_an_outbound_only_node_dials_through_a_socks5_proxy(curve_pair):
    proxy = Socks5Proxy()
    try:
        hub, out = curve_pair("hub"), curve_pair("out", socks_proxy=f"127.0.0.1:{proxy.port}")
        both = {"hub": hub, "out": out}
        exchange(both, "out", "hub", b"through the proxy")
        exchange(both, "hub", "out", b"and back")
        assert proxy.connected == [("127.0.0.1", int(hub.listen.rsplit(":", 1)[1]))]
    finally:
        proxy.close()


# -- real node processes ---------------------------------------------------------------------------


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (its socket inodes in the LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.slow
def test_a_federation_trains_with_a_site_that_has_no_listening_socket(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SMALL_SCENARIO.format(nodes=3, rounds=500, topology="complete", name="s").replace("timeout = 120", "timeout = 120\noutbound_only = [2]"))
    federation = create_federation(ScenarioConfig.load(path), tmp_path / "run")
    assert not federation.manifest.member("hospital-c").reachable
    processes = {name: subprocess.Popen([sys.executable, "-m", "nodes", "run", "--site", str(site)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=ENV) for name, site in federation.sites.items()}
    sites = federation.sites
    try:
        deadline = time.monotonic() + 180
        # Each reachable site merged c's models (answers and pushes went over c's own
        # connections), and c merged both of theirs.
        while not ("hospital-c" in merged_peers(sites["hospital-a"]) and "hospital-c" in merged_peers(sites["hospital-b"])
                   and merged_peers(sites["hospital-c"]) == {"hospital-a", "hospital-b"}):
            assert time.monotonic() < deadline, f"no exchange with c: {[merged_peers(s) for s in sites.values()]}"
            assert all(p.poll() is None for p in processes.values()), "a node exited"
            time.sleep(0.2)
        assert listening_ports(processes["hospital-c"].pid) == set()
        port_a = int(federation.manifest.member("hospital-a").endpoint.rsplit(":", 1)[1])
        assert port_a in listening_ports(processes["hospital-a"].pid)  # the check does see a listener
        stop_processes(processes.values())
    finally:
        kill_survivors(processes.values())
    result = subprocess.run([sys.executable, "-m", "nodes", "log", "verify", str(tmp_path / "run")], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_federation_create_refuses_neighbouring_outbound_only_members_in_one_line(tmp_path):
    from tests.test_cli import PLAN, assert_user_error, invoke

    cards = []
    for i in range(4):
        site = tmp_path / f"s{i}"
        endpoint = [] if i in (0, 1) else ["--endpoint", f"tcp://127.0.0.1:{17400 + i}"]
        assert invoke(node_cli, ["init", "--site", site, "--name", f"h{i}", *endpoint, *([] if endpoint else ["--outbound-only"]),
                                 "--data-site", i, "--data-sites", 4]).exit_code == 0
        cards += ["--member", site / "member.json"]
    (tmp_path / "plan.toml").write_text(PLAN)
    create = ["federation", "create", "--name", "f", "--plan", tmp_path / "plan.toml", "--out", tmp_path / "m.json"]
    assert_user_error(invoke(node_cli, [*create, *cards]), "h0 and h1 are both outbound-only", "list explicit neighbours")
    (tmp_path / "plan.toml").write_text(PLAN.replace('name = "ring"', 'name = "explicit"') + '\n[neighbours]\nh0 = ["h2", "h3"]\nh1 = ["h2", "h3"]\nh2 = ["h0", "h1"]\nh3 = ["h0", "h1"]\n')
    result = invoke(node_cli, [*create, *cards])
    assert result.exit_code == 0, result.output
    shown = invoke(node_cli, ["federation", "show", tmp_path / "m.json"]).output
    assert "h0               outbound-only" in shown and "h2               tcp://127.0.0.1:17402" in shown
