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
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, PlainSerializer, ValidatorFunctionWrapHandler, WrapValidator, model_validator

from swarm.atomic import write_atomic
from swarm.config import Table, read_toml, refuse, setting, toml_text
from swarm.errors import ConfigError
from swarm.manifest import ENDPOINT_PATTERN, NAME_PATTERN
from swarm.messages import MAX_CHUNK_LEAVES
from swarm.transfer import LEAF_BYTES, TransferSettings

from .training import AmpMode, DeviceSpec

LOG_LEVELS = ("debug", "info", "warning", "error")
SOCKS_PATTERN = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")  # libzmq's SOCKS_PROXY: host:port


class SiteTable(Table):
    """site.toml [site]."""

    TABLE: ClassVar[str] = "site"

    name: str

    @model_validator(mode="after")
    def _a_member_name(self) -> SiteTable:
        if not NAME_PATTERN.match(self.name):
            raise refuse("name", f"{self.name!r} must be lowercase letters, digits, '-', '_' or '.' (example: name = \"hospital-a\")")
        return self


class NodeTable(Table):
    """site.toml [node]: where this node listens (or that it is outbound-only) and how it runs."""

    TABLE: ClassVar[str] = "node"

    reachable: bool = True  # false: outbound-only, binds nothing; dials its neighbours, which answer over that connection
    endpoint: str | None = None  # what other sites connect to (goes into the manifest); None: outbound-only
    listen: str | None = None  # what this node binds, e.g. tcp://0.0.0.0:7000 (default: the endpoint); None: outbound-only
    socks_proxy: str | None = None  # host:port of a SOCKS5 proxy for the connections this node opens
    threads: int = setting(1, ge=1, le=256)  # torch threads for local training
    log_level: Literal[LOG_LEVELS] = "info"

    @model_validator(mode="before")
    @classmethod
    def _listen_on_the_endpoint(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and values.get("reachable", True) is True and "endpoint" in values and "listen" not in values:
            return {**values, "listen": values["endpoint"]}
        return values

    @model_validator(mode="after")
    def _where_it_listens(self) -> NodeTable:
        if self.reachable:
            if self.endpoint is None:
                raise refuse("endpoint", 'missing; add e.g. endpoint = "..."')
            for key, value in (("endpoint", self.endpoint), ("listen", self.listen)):
                if not ENDPOINT_PATTERN.match(str(value)):
                    raise refuse(key, f"{value!r} is not a TCP endpoint (example: {key} = \"tcp://127.0.0.1:7000\")")
        else:
            for key in ("endpoint", "listen"):
                if getattr(self, key) is not None:
                    raise refuse(key, f"an outbound-only site (reachable = false) listens nowhere; remove {key}, or set reachable = true")
        if self.socks_proxy is not None and not SOCKS_PATTERN.match(self.socks_proxy):
            raise refuse("socks_proxy", f"{self.socks_proxy!r} is not host:port (example: socks_proxy = \"proxy.hospital.local:1080\")")
        return self


class Hardware(Table):
    """site.toml [training]: only where this site trains (device, amp), over the plan's; what
    it trains is the federation's plan."""

    TABLE: ClassVar[str] = "training"

    device: DeviceSpec | None = None
    amp: AmpMode | None = setting(None, example="bf16")
    UNKNOWN_KEY: ClassVar[str] = "site.toml [training] takes only device and amp; the other training settings are the federation's plan"


_TRANSFER = TransferSettings()


class TransferTable(Table):
    """site.toml [transfer]: how this node pulls models (swarm.transfer); the defaults suit a LAN."""

    TABLE: ClassVar[str] = "transfer"

    # Chunks group whole 4 MiB leaves up to this size; below 4, every leaf travels alone.
    chunk_mib: int = setting(_TRANSFER.chunk_bytes // 2**20, ge=1, le=MAX_CHUNK_LEAVES * LEAF_BYTES // 2**20)
    window: int = setting(_TRANSFER.window, ge=1, le=64)
    chunk_timeout: float = setting(_TRANSFER.chunk_timeout, ge=0.1, le=3600.0)
    retries: int = setting(_TRANSFER.retries, ge=0, le=1000)

    def settings(self) -> TransferSettings:
        return TransferSettings(self.chunk_mib * 2**20, self.window, self.chunk_timeout, self.retries)

    @classmethod
    def of(cls, settings: TransferSettings) -> TransferTable:
        return cls(chunk_mib=settings.chunk_bytes // 2**20, window=settings.window, chunk_timeout=settings.chunk_timeout, retries=settings.retries)


def _transfer_settings(value: Any, check: ValidatorFunctionWrapHandler) -> TransferSettings:
    return value if isinstance(value, TransferSettings) else check(value).settings()


# site.toml's [training] and [transfer] are checked as their Tables (whose messages name
# their fields) and held as what the node uses: the keys given, over the plan's; the
# TransferSettings it pulls with.
_HardwareKeys = Annotated[Hardware, AfterValidator(Hardware.to_dict), PlainSerializer(dict)]
_Transfer = Annotated[TransferTable, WrapValidator(_transfer_settings), PlainSerializer(lambda s: TransferTable.of(s).to_dict())]

_OUTBOUND_ONLY = "# Outbound-only: binds nothing; dials its neighbours, which answer over that connection.\n"
_HARDWARE = "# Where this site trains (the plan's [training] says what it trains).\n"
_BYZANTINE = "# A SIMULATED BYZANTINE SITE: it publishes poisoned models (scenarios.attacks).\n"


class SiteConfig(Table):
    """site.toml. Its tables' fields are named as the file's reader names them
    (node.endpoint); only a mistake of the file itself names the file (site.toml.nodes:
    unknown key)."""

    TABLE: ClassVar[str] = "site.toml"

    site: SiteTable
    node: NodeTable
    data: dict[str, Any] = {}  # validated by nodes.data.DataConfig
    attack: dict[str, Any] = {}  # a scenario's simulated Byzantine site, kept as written (scenarios.attacks checks it); empty: honest
    training: _HardwareKeys = {}  # this site's device and amp (the keys given), over the plan's
    transfer: _Transfer = _TRANSFER  # how this node pulls models over its links

    @model_validator(mode="before")
    @classmethod
    def _tables_as_empty(cls, values: Any) -> Any:
        # An absent [site] or [node] is checked as an empty one: its missing keys are named.
        return {"site": {}, "node": {}} | dict(values) if isinstance(values, Mapping) else values

    @classmethod
    def from_dict(cls, values: Any, where: str | None = None, context: Mapping[str, Any] | None = None) -> SiteConfig:
        try:
            return super().from_dict(values, "", context)
        except ConfigError as error:
            if str(error).startswith((".", ":")):  # about the file, not one of its tables
                raise ConfigError(f"{cls.TABLE if where is None else where}{error}") from None
            raise

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def listen(self) -> str | None:
        return self.node.listen

    @property
    def endpoint(self) -> str | None:
        return self.node.endpoint

    @property
    def socks_proxy(self) -> str | None:
        return self.node.socks_proxy

    @property
    def threads(self) -> int:
        return self.node.threads

    @property
    def log_level(self) -> str:
        return self.node.log_level

    def to_toml(self) -> str:
        """The file's text: table by table, each after the comment that says what it is."""
        tables: list[tuple[str, str, Mapping[str, Any]]] = [
            ("", "site", self.site.to_dict()),
            ("" if self.node.reachable else _OUTBOUND_ONLY, "node", self.node.to_dict()),
            ("", "data", self.data),
        ]
        if self.training:
            tables.append((_HARDWARE, "training", self.training))
        if self.transfer != _TRANSFER:  # defaults are not written out
            tables.append(("", "transfer", TransferTable.of(self.transfer).to_dict()))
        if self.attack:
            tables.append((_BYZANTINE, "attack", self.attack))
        return "\n".join(comment + toml_text({name: table}) for comment, name, table in tables)


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
