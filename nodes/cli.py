"""`swarm-node`: what a hospital's operator runs at the site."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import click

from swarm.errors import ConfigError, SwarmError, UsageError, resource_error
from swarm.manifest import build_manifest, save_manifest, SignedManifest

from .site import SiteDir, init_site

SITE_OPTION = click.option("--site", "site_dir", required=True, type=click.Path(path_type=Path), help="The site directory.")


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user's mistake as one line and exit 2; other known failures exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except SwarmError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a full disk, a permission: one line naming the path, exit 3
            error = resource_error(exc, then="run the command again")
            if error is None:
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)

    return wrapper


def run_cli(group: click.Group) -> None:
    """Run a click group so that every usage mistake is one line on stderr and exit 2."""
    try:
        code = group.main(standalone_mode=False)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else group.name
        click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


DEV_COMMANDS = ("bench", "fuzz")  # in swarm_dev, the developer tools, which a hospital's image leaves out


class NodeCommands(click.Group):
    """The node's commands, and bench and fuzz from the developer tools: imported only when
    asked for, so that the node runs without them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *DEV_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in DEV_COMMANDS:
            return super().get_command(ctx, cmd_name)
        try:
            from swarm_dev.cli import main as dev_cli
        except ModuleNotFoundError as exc:
            if exc.name != "swarm_dev":
                raise
            return _missing_dev_command(cmd_name)
        return dev_cli.get_command(ctx, cmd_name)


def _missing_dev_command(name: str) -> click.Command:
    """Stands in for a developer tool that is not installed: one line and exit 2, whatever the arguments."""

    def missing() -> None:
        click.echo(f"error: swarm-node {name}: the developer tools (package swarm_dev) are not installed here; "
                   f"run `swarm-dev {name}` from a source checkout (pip install -e .)", err=True)
        sys.exit(2)

    return click.Command(name, callback=missing, help="(not installed: a developer tool, see swarm-dev)", add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


def entry() -> None:
    run_cli(main)


@click.group(cls=NodeCommands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run a hospital's node in a serverless federated-learning swarm."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


@main.command()
@SITE_OPTION
@click.option("--name", required=True, help="This site's name in the federation, e.g. hospital-a.")
@click.option("--endpoint", default=None, help="Where other sites reach this node, e.g. tcp://10.0.0.5:7000 (or --outbound-only).")
@click.option("--listen", default=None, help="What to bind (default: the endpoint), e.g. tcp://0.0.0.0:7000.")
@click.option("--outbound-only", is_flag=True, help="No inbound port: bind nothing, dial the neighbours (which must be reachable) and get their answers over those connections.")
@click.option("--socks-proxy", default=None, metavar="HOST:PORT", help="Open this node's connections through a SOCKS5 proxy.")
@click.option("--data-site", type=int, default=None, help="Index of this site in the synthetic default data set.")
@click.option("--data-sites", type=int, default=6, show_default=True, help="Number of sites in the synthetic default data set.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the synthetic default data set.")
@click.option("--data", "data_pairs", multiple=True, metavar="KEY=VALUE",
              help="This site's own data, a [data] key each (repeat), e.g. --data source=dicom --data root=/data/ct "
                   "--data labels=labels.csv; values in JSON (numbers, true, [\"a\", \"b\"]) or plain text.")
@user_errors
def init(site_dir: Path, name: str, endpoint: str | None, listen: str | None, outbound_only: bool, socks_proxy: str | None,
         data_site: int | None, data_sites: int, data_seed: int, data_pairs: tuple[str, ...]) -> None:
    """Create a site directory: keys, site.toml and the member card to send to the coordinator."""
    if outbound_only and (endpoint or listen):
        raise ConfigError("--outbound-only: an outbound-only site listens nowhere; drop --endpoint and --listen")
    if not outbound_only and not endpoint:
        raise ConfigError("--endpoint: required (where other sites reach this node, e.g. --endpoint tcp://10.0.0.5:7000), or give --outbound-only")
    if data_pairs:
        from .sources import data_source

        data = _data_table(data_pairs)
        shape = data_source(data).task_shape()  # checks every key, finds the files and the classes now
        click.echo(f"data: {data.get('source')}, input {list(shape.input_shape)}, {shape.num_classes} classes, {shape.kind}")
    else:
        data = {"source": "synthetic-multisite", "sites": data_sites, "seed": data_seed}
        if data_site is not None:
            data["site"] = data_site
    init_site(site_dir, name, endpoint, listen, data, socks_proxy=socks_proxy)
    click.echo(f"created site {name} in {site_dir}; send {SiteDir(site_dir).member_path} to the federation coordinator")


def _data_table(pairs: Sequence[str]) -> dict[str, Any]:
    """--data KEY=VALUE pairs as a [data] table (values parsed as JSON where they are JSON)."""
    table: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--data {pair!r}: expected KEY=VALUE, e.g. --data source=folder or --data root=/data/xray")
        try:
            table[key] = json.loads(text)
        except ValueError:
            table[key] = text
    for key in ("root", "path"):  # the node may be started from another directory
        if isinstance(table.get(key), str) and table[key]:
            table[key] = str(Path(table[key]).expanduser().resolve())
    if "source" not in table:
        raise ConfigError("--data: name the source, e.g. --data source=folder (folder, dicom, nifti, medmnist, ...)")
    return table


@main.group()
def federation() -> None:
    """Create, sign, verify and install the federation manifest."""


@federation.command("create")
@click.option("--name", required=True, help="Federation name, e.g. brain-mri-2026.")
@click.option("--member", "cards", multiple=True, required=True, type=click.Path(path_type=Path), help="A site's member.json (repeat per site).")
@click.option("--plan", "plan_path", required=True, type=click.Path(path_type=Path), help="Plan TOML: [plan] rounds, [topology] (or name = \"explicit\" and a [neighbours] table), [protocol], [model], [training], [task], optional [merge].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the manifest.")
@user_errors
def federation_create(name: str, cards: tuple[Path, ...], plan_path: Path, out: Path) -> None:
    """Write an unsigned manifest (version 1) from member cards and a plan file."""
    from .manifests import plan_from_toml, read_card

    members = [read_card(card) for card in cards]
    plan = plan_from_toml(plan_path, [m.name for m in members])
    manifest = build_manifest(name, members, plan)
    save_manifest(out, SignedManifest(manifest, {}))
    click.echo(f"wrote {out} (federation id {manifest.federation_id.hex()}); every member now runs `swarm-node federation sign {out} --site DIR`")


HISTORY_OPTION = click.option(
    "--history", "history", multiple=True, type=click.Path(path_type=Path),
    help="Earlier versions of the manifest: files, or a directory such as a site's federation/ (repeat).",
)


@federation.command("propose")
@click.option("--from", "current_path", required=True, type=click.Path(path_type=Path), help="The current version of the manifest.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the next version (unsigned).")
@click.option("--add", "added", multiple=True, type=click.Path(path_type=Path), help="A joining site's member.json (repeat).")
@click.option("--remove", "removed", multiple=True, metavar="NAME", help="A member that leaves (repeat).")
@click.option("--rotate", "rotated", multiple=True, type=click.Path(path_type=Path), help="A member's new member.json: new keys or endpoint (repeat).")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path), default=None, help="A new plan TOML, as for create (default: the current plan, its topology laid out again over the new members).")
@click.option("--threshold", type=click.IntRange(min=1), default=None, help="How many members of the new version must sign the version after it (default: a majority if it was one, otherwise unchanged).")
@user_errors
def federation_propose(current_path: Path, out: Path, added: tuple[Path, ...], removed: tuple[str, ...], rotated: tuple[Path, ...], plan_path: Path | None, threshold: int | None) -> None:
    """Write the next version of the manifest: members join, leave or change their keys,
    or the plan changes. It needs the signatures of a threshold of the current version's
    members and of every member that joins or changes its signing key."""
    from .manifests import propose_version

    for line in propose_version(current_path, out, added, removed, rotated, plan_path, threshold):
        click.echo(line)


@federation.command("sign")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@SITE_OPTION
@user_errors
def federation_sign(manifest_path: Path, site_dir: Path) -> None:
    """Add this site's signature to MANIFEST's signatures file (any version)."""
    from .manifests import sign_manifest

    click.echo(sign_manifest(manifest_path, site_dir))


@federation.command("verify")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@HISTORY_OPTION
@user_errors
def federation_verify(manifest_path: Path, history: tuple[Path, ...]) -> None:
    """Check MANIFEST's signatures: every member for version 1; for a later version, the
    rotation rule against the versions before it (--history). Print the federation id."""
    from .manifests import verify_manifest

    click.echo(verify_manifest(manifest_path, history))


@federation.command("show")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@user_errors
def federation_show(manifest_path: Path) -> None:
    """Print the version, the previous version, the threshold, the members, the plan and
    who has signed."""
    from .manifests import describe_manifest

    for line in describe_manifest(manifest_path):
        click.echo(line)


@federation.command("install")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@SITE_OPTION
@HISTORY_OPTION
@user_errors
def federation_install(manifest_path: Path, site_dir: Path, history: tuple[Path, ...]) -> None:
    """Verify MANIFEST and install it in the site, ready for `swarm-node run`. A later
    version is checked against the site's installed versions (a joining site passes the
    earlier ones with --history); a node running at the site adopts it within a second."""
    from .launch import install_manifest

    signed = install_manifest(manifest_path, site_dir, history)
    click.echo(f"installed federation {signed.manifest.name} version {signed.manifest.version} ({signed.manifest.federation_id.hex()[:16]}) in {site_dir}")


@main.command()
@click.option("--site", "site_dirs", required=True, multiple=True, type=click.Path(path_type=Path), help="The site directory (repeat to run several sites' nodes in this one process).")
@click.option("--insecure", is_flag=True, help="DEBUGGING ONLY: turn CurveZMQ off (plaintext, no allow-list).")
@click.option("--device", default=None, metavar="auto|cpu|cuda|cuda:N", help="Where to train (overrides site.toml [training] device and the plan's).")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None, help="Serve Prometheus metrics on this port (extra `metrics`).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port (0.0.0.0: every interface).")
@user_errors
def run(site_dirs: tuple[Path, ...], insecure: bool, device: str | None, metrics_port: int | None, metrics_host: str) -> None:
    """Run this site's node until the plan is done or Ctrl-C. Connections are encrypted and
    authenticated with CurveZMQ; only the manifest's neighbours get through."""
    from .devices import check_device_spec
    from .launch import INSECURE_WARNING, run_sites

    if device is not None:
        check_device_spec(device, "--device")
    if insecure:
        click.echo(f"WARNING: {INSECURE_WARNING}", err=True)
    outcomes = run_sites(list(site_dirs), insecure=insecure, device=device, metrics=(metrics_host, metrics_port) if metrics_port else None)
    for site_dir, outcome in zip(site_dirs, outcomes):
        click.echo(f"{outcome.state} at version {outcome.published_seq}" + (f" ({site_dir})" if len(site_dirs) > 1 else ""))


@main.command()
@SITE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print status.json with disk free, the last round and warnings.")
@click.option("--watch", type=click.FloatRange(min=1.0), default=None, help="Print again every this many seconds, until Ctrl-C.")
@user_errors
def status(site_dir: Path, as_json: bool, watch: float | None) -> None:
    """What the site's node is doing: state, versions, each neighbour's last contact,
    bytes, refused messages, disk free, and warnings. Exit 1 if there are warnings."""
    import time

    from .site_status import format_status, site_status

    while True:
        report = site_status(site_dir)
        click.echo(json.dumps(report, indent=2) if as_json else format_status(report))
        if watch is None:
            break
        time.sleep(watch)
        click.echo("")
    if report["warnings"]:
        sys.exit(1)


@main.group("log")
def log_group() -> None:
    """Audit update logs."""


@log_group.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@user_errors
def log_verify(paths: tuple[Path, ...]) -> None:
    """Verify signatures, chains, membership and checkpoints of every log under PATHS."""
    from .audit import verify_sites

    report = verify_sites(paths)
    if not report.ok:
        for failure in report.failures:
            click.echo(f"FAIL {failure}", err=True)
        sys.exit(1)
    click.echo(f"OK {report.logs_checked} logs, {report.entries_checked} entries verified")


@log_group.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@user_errors
def log_show(path: Path) -> None:
    """Print a site's history: who published which version, merged from whose versions."""
    from .audit import describe_log

    for line in describe_log(path):
        click.echo(line)


@main.command("export")
@click.option("--site", "site_dir", required=True, type=click.Path(path_type=Path), help="The site directory.")
@click.option("--version", "version", type=click.IntRange(min=1), default=None, help="The version (seq) to export (default: the latest).")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "torchscript", "onnx"]), default="safetensors", show_default=True, help="File format (onnx needs the extra 'export').")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The model file to write; the card goes to OUT.card.json and OUT.card.md.")
@user_errors
def export_command(site_dir: Path, version: int | None, fmt: str, out: Path) -> None:
    """Export a logged version of this site's model, with a model card (federation, version,
    log entry hash, model digest, provenance, metrics). The site's log is verified first;
    `swarm-node audit SITE --model OUT` later confirms the file is the logged version."""
    from .export import export_model

    exported = export_model(site_dir, out, fmt, version)
    version_card = exported.card["version"]
    click.echo(f"exported {version_card['author']}#{version_card['seq']} (round {version_card['round']}, model {version_card['model_digest'][:16]}, "
               f"entry {version_card['entry_hash'][:16]}) as {fmt} to {exported.path}; card: {exported.path}.card.json, .card.md")


@main.command("audit")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_ref", metavar="DIGEST|NAME#SEQ|FILE", default=None, help="Also trace this model's provenance: a digest prefix (8+ hex digits), e.g. hospital-a#12, or a file from `swarm-node export` (its tensors must be a logged version).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@user_errors
def audit_command(paths: tuple[Path, ...], model_ref: str | None, as_json: bool) -> None:
    """Audit the logs and checkpoints of every site under PATHS: chain validity per author,
    forks (from the logs and from evidence files) and, with --model, the model's ancestors.

    Exit 0: every chain valid, no forks, and the model's provenance complete. Exit 1: the
    audit found problems (failed chains, forks, bad evidence, missing or mismatched
    ancestors, a model file whose tensors are no logged version). Exit 2: a usage mistake (bad path, unknown or ambiguous --model)."""
    from .audit_report import audit_json, audit_lines, run_audit

    result = run_audit(paths, model_ref)
    click.echo(json.dumps(audit_json(result), indent=2) if as_json else "\n".join(audit_lines(result)))
    if not result.ok:
        sys.exit(1)
