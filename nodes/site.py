"""A hospital's site directory and its `site.toml`.

    SITE/
      site.toml                 this site's settings (name, where to listen, its data; [attack]
                                only in a scenario's simulated sites, which swarm-node run refuses)
      member.json               the public card other sites put in the manifest
      keys/                     signing.key, transport.key (0600), *.pub
      federation/manifest.json  the signed federation manifest, version 1 (+ manifest.json.sigs.json)
      federation/v0002.json     later versions, each valid after the one before (swarm.manifest_history)
      log/updates.log           this site's signed, hash-chained update log
      peers/<name>.log          verified copies of neighbours' log entries
      checkpoints/<seq>.swt     one checkpoint per published version
      metrics.jsonl             one line per round
      status.json               counters and state, rewritten at exit
      evidence/                 proofs of equivocation: forked log entries, conflicting manifests
      incoming/<peer>.part      what a pull had received when the node stopped, for a resume
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm.atomic import write_atomic
from swarm.config import check_keys, get_bool, get_float, get_int, get_str, read_toml, table
from swarm.errors import ConfigError
from swarm.manifest import ENDPOINT_PATTERN, NAME_PATTERN
from swarm.messages import MAX_CHUNK_LEAVES
from swarm.transfer import LEAF_BYTES, TransferSettings

LOG_LEVELS = ("debug", "info", "warning", "error")
SOCKS_PATTERN = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")  # libzmq's SOCKS_PROXY: host:port


@dataclass(frozen=True)
class SiteConfig:
    name: str
    listen: str | None  # what this node binds, e.g. tcp://0.0.0.0:7000; None: outbound-only, binds nothing
    endpoint: str | None  # what other sites connect to (goes into the manifest); None: outbound-only
    threads: int  # torch threads for local training
    log_level: str
    data: dict[str, Any]  # validated by nodes.data.DataConfig
    attack: dict[str, Any] = field(default_factory=dict)  # a scenario's simulated Byzantine site, kept as written (scenarios.attacks checks it); empty: honest
    training: dict[str, str] = field(default_factory=dict)  # this site's device and amp, over the plan's
    transfer: TransferSettings = TransferSettings()  # how this node pulls models over its links
    socks_proxy: str | None = None  # host:port of a SOCKS5 proxy for the connections this node opens

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "site.toml") -> SiteConfig:
        check_keys(values, {"site", "node", "data", "attack", "training", "transfer"}, where)
        site = table(values, "site", where)
        check_keys(site, {"name"}, f"{where} [site]")
        name = get_str(site, "name", "site")
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"site.name: {name!r} must be lowercase letters, digits, '-', '_' or '.' (example: name = \"hospital-a\")")
        node = table(values, "node", where)
        check_keys(node, {"listen", "endpoint", "reachable", "socks_proxy", "threads", "log_level"}, "node")
        endpoint: str | None = None
        listen: str | None = None
        if get_bool(node, "reachable", "node", default=True):
            endpoint = get_str(node, "endpoint", "node")
            listen = get_str(node, "listen", "node", default=endpoint)
            for key, value in (("endpoint", endpoint), ("listen", listen)):
                if not ENDPOINT_PATTERN.match(value):
                    raise ConfigError(f"node.{key}: {value!r} is not a TCP endpoint (example: {key} = \"tcp://127.0.0.1:7000\")")
        else:
            for key in ("endpoint", "listen"):
                if key in node:
                    raise ConfigError(f"node.{key}: an outbound-only site (reachable = false) listens nowhere; remove {key}, or set reachable = true")
        socks_proxy = get_str(node, "socks_proxy", "node") if "socks_proxy" in node else None
        if socks_proxy is not None and not SOCKS_PATTERN.match(socks_proxy):
            raise ConfigError(f"node.socks_proxy: {socks_proxy!r} is not host:port (example: socks_proxy = \"proxy.hospital.local:1080\")")
        return cls(
            name=name,
            listen=listen,
            endpoint=endpoint,
            socks_proxy=socks_proxy,
            threads=get_int(node, "threads", "node", default=1, minimum=1, maximum=256),
            log_level=get_str(node, "log_level", "node", default="info", choices=LOG_LEVELS),
            data=table(values, "data", where),
            attack=table(values, "attack", where),
            training=_checked_hardware(table(values, "training", where)),
            transfer=_checked_transfer(table(values, "transfer", where)),
        )

    def to_toml(self) -> str:
        lines = [
            "[site]",
            f"name = {json.dumps(self.name)}",
            "",
            "[node]",
            *([f"listen = {json.dumps(self.listen)}", f"endpoint = {json.dumps(self.endpoint)}"] if self.endpoint is not None
              else ["# Outbound-only: binds nothing; dials its neighbours, which answer over that connection.", "reachable = false"]),
            *([f"socks_proxy = {json.dumps(self.socks_proxy)}"] if self.socks_proxy else []),
            f"threads = {self.threads}",
            f"log_level = {json.dumps(self.log_level)}",
            "",
            "[data]",
        ]
        lines += [f"{key} = {_toml_value(value)}" for key, value in self.data.items()]
        if self.training:
            lines += ["", "# Where this site trains (the plan's [training] says what it trains).", "[training]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in self.training.items()]
        if self.transfer != TransferSettings():
            t = self.transfer
            lines += ["", "[transfer]", f"chunk_mib = {t.chunk_bytes // 2**20}", f"window = {t.window}",
                      f"chunk_timeout = {t.chunk_timeout!r}", f"retries = {t.retries}"]
        if self.attack:
            lines += ["", "# A SIMULATED BYZANTINE SITE: it publishes poisoned models (scenarios.attacks).", "[attack]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in self.attack.items()]
        return "\n".join(lines) + "\n"


HARDWARE_KEYS = ("device", "amp")


def _checked_hardware(values: dict[str, Any]) -> dict[str, str]:
    """site.toml [training]: only where this site trains (device, amp); the rest is the plan's."""
    from .devices import AMP_MODES, check_device_spec

    for key in values:
        if key not in HARDWARE_KEYS:
            raise ConfigError(f"training.{key}: site.toml [training] takes only device and amp; "
                              "the other training settings are the federation's plan")
    if "device" in values:
        check_device_spec(values["device"], "training.device")
    if "amp" in values and values["amp"] not in AMP_MODES:
        raise ConfigError(f'training.amp: must be one of {", ".join(AMP_MODES)}, got {values["amp"]!r} (example: amp = "bf16")')
    return dict(values)


def _checked_transfer(values: dict[str, Any]) -> TransferSettings:
    """site.toml [transfer]: how this node pulls models (swarm.transfer); defaults suit a LAN."""
    check_keys(values, {"chunk_mib", "window", "chunk_timeout", "retries"}, "transfer")
    default = TransferSettings()
    # Chunks group whole 4 MiB leaves up to this size; below 4, every leaf travels alone.
    chunk_mib = get_int(values, "chunk_mib", "transfer", default=default.chunk_bytes // 2**20, minimum=1, maximum=MAX_CHUNK_LEAVES * LEAF_BYTES // 2**20)
    return TransferSettings(
        chunk_bytes=chunk_mib * 2**20,
        window=get_int(values, "window", "transfer", default=default.window, minimum=1, maximum=64),
        chunk_timeout=get_float(values, "chunk_timeout", "transfer", default=default.chunk_timeout, minimum=0.1, maximum=3600.0),
        retries=get_int(values, "retries", "transfer", default=default.retries, minimum=0, maximum=1000),
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"data: cannot write {value!r} to site.toml; use numbers, strings or lists")


class SiteDir:
    """Paths inside a site directory; creating or checking them is explicit."""

    CHECKPOINT_PATTERN = re.compile(r"^(\d{8})\.swt$")
    LOCAL_CHECKPOINT_PATTERN = re.compile(r"^(\d{8})\.local\.swt$")

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    config_path = property(lambda self: self.root / "site.toml")
    member_path = property(lambda self: self.root / "member.json")
    keys_dir = property(lambda self: self.root / "keys")
    manifest_path = property(lambda self: self.root / "federation" / "manifest.json")
    log_path = property(lambda self: self.root / "log" / "updates.log")
    peers_dir = property(lambda self: self.root / "peers")
    checkpoints_dir = property(lambda self: self.root / "checkpoints")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    status_path = property(lambda self: self.root / "status.json")
    evidence_dir = property(lambda self: self.root / "evidence")  # proofs that a member equivocated
    incoming_dir = property(lambda self: self.root / "incoming")  # pulls cut by a stop (nodes.transfers)

    def checkpoint_path(self, seq: int) -> Path:
        return self.checkpoints_dir / f"{seq:08d}.swt"

    def local_checkpoint_path(self, seq: int) -> Path:
        """The tensors that stay at this site (partial sharing, FedBN) for version `seq`."""
        return self.checkpoints_dir / f"{seq:08d}.local.swt"

    def checkpoint_seqs(self, local: bool = False) -> list[int]:
        if not self.checkpoints_dir.is_dir():
            return []
        pattern = self.LOCAL_CHECKPOINT_PATTERN if local else self.CHECKPOINT_PATTERN
        found = (pattern.match(p.name) for p in self.checkpoints_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def peer_log_path(self, peer: str) -> Path:
        return self.peers_dir / f"{peer}.log"

    def load_config(self) -> SiteConfig:
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: no such site directory; create one with `swarm-node init --site {self.root}`")
        return SiteConfig.from_dict(read_toml(self.config_path, "site config"))

    def write_config(self, config: SiteConfig) -> None:
        write_atomic(self.config_path, config.to_toml().encode())


def init_site(root: Path, name: str, endpoint: str | None, listen: str | None, data: dict[str, Any], attack: dict[str, Any] | None = None,
              socks_proxy: str | None = None) -> SiteConfig:
    """Create a site directory: keys (private files 0600), site.toml and the public member
    card. Without an endpoint the site is outbound-only (binds nothing)."""
    from swarm.identity import create_site_keys
    from swarm.manifest import Member

    site = SiteDir(root)
    if site.config_path.exists():
        raise ConfigError(f"{root}: already a site directory (site.toml exists); choose another --site or delete it first")
    node: dict[str, Any] = {"endpoint": endpoint, "listen": listen or endpoint} if endpoint is not None else {"reachable": False}
    if socks_proxy:
        node["socks_proxy"] = socks_proxy
    config = SiteConfig.from_dict({"site": {"name": name}, "node": node, "data": data, "attack": attack or {}})
    site.root.mkdir(parents=True, exist_ok=True)
    keys = create_site_keys(site.keys_dir)
    site.write_config(config)
    card = Member(name, keys.signing.public, keys.transport_public.decode(), endpoint).card()
    write_atomic(site.member_path, (json.dumps(card, indent=2) + "\n").encode())
    return config
