"""`swarm-node`: what a hospital's operator runs at the site."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from swarm.config import read_toml, table
from swarm.errors import SwarmError, UsageError
from swarm.identity import load_site_keys
from swarm.manifest import Member, build_manifest, load_manifest, save_manifest, SignedManifest

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


def entry() -> None:
    run_cli(main)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run a hospital's node in a serverless federated-learning swarm."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


@main.command()
@SITE_OPTION
@click.option("--name", required=True, help="This site's name in the federation, e.g. hospital-a.")
@click.option("--endpoint", required=True, help="Where other sites reach this node, e.g. tcp://10.0.0.5:7000.")
@click.option("--listen", default=None, help="What to bind (default: the endpoint), e.g. tcp://0.0.0.0:7000.")
@click.option("--data-site", type=int, default=None, help="Index of this site in the synthetic default data set.")
@click.option("--data-sites", type=int, default=6, show_default=True, help="Number of sites in the synthetic default data set.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the synthetic default data set.")
@user_errors
def init(site_dir: Path, name: str, endpoint: str, listen: str | None, data_site: int | None, data_sites: int, data_seed: int) -> None:
    """Create a site directory: keys, site.toml and the member card to send to the coordinator."""
    data: dict[str, Any] = {"source": "synthetic-multisite", "sites": data_sites, "seed": data_seed}
    if data_site is not None:
        data["site"] = data_site
    init_site(site_dir, name, endpoint, listen, data)
    click.echo(f"created site {name} in {site_dir}; send {SiteDir(site_dir).member_path} to the federation coordinator")


@main.group()
def federation() -> None:
    """Create, sign, verify and install the federation manifest."""


@federation.command("create")
@click.option("--name", required=True, help="Federation name, e.g. brain-mri-2026.")
@click.option("--member", "cards", multiple=True, required=True, type=click.Path(path_type=Path), help="A site's member.json (repeat per site).")
@click.option("--plan", "plan_path", required=True, type=click.Path(path_type=Path), help="Plan TOML: [plan] rounds, [topology] (or name = \"explicit\" and a [neighbours] table), [protocol], [model], [training], [task].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the manifest.")
@user_errors
def federation_create(name: str, cards: tuple[Path, ...], plan_path: Path, out: Path) -> None:
    """Write an unsigned manifest from member cards and a plan file."""
    from .plan import build_plan

    members = [Member.from_card(_read_json(card), str(card)) for card in cards]
    values = read_toml(plan_path, "plan")
    plan_table = table(values, "plan", str(plan_path))
    plan = build_plan(
        [m.name for m in members],
        plan_table.get("rounds", 20),
        table(values, "topology", str(plan_path)),
        table(values, "protocol", str(plan_path)),
        table(values, "model", str(plan_path)),
        table(values, "training", str(plan_path)),
        table(values, "task", str(plan_path)),
        table(values, "neighbours", str(plan_path)),
    )
    manifest = build_manifest(name, members, plan)
    save_manifest(out, SignedManifest(manifest, {}))
    click.echo(f"wrote {out} (federation id {manifest.federation_id.hex()}); every member now runs `swarm-node federation sign {out} --site DIR`")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path}: not valid JSON") from None


@federation.command("sign")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@SITE_OPTION
@user_errors
def federation_sign(manifest_path: Path, site_dir: Path) -> None:
    """Add this site's signature to MANIFEST's signatures file."""
    site = SiteDir(site_dir)
    config = site.load_config()
    keys = load_site_keys(site.keys_dir)
    signed = load_manifest(manifest_path)
    signed.sign(config.name, keys.signing)
    save_manifest(manifest_path, signed)
    missing = [m.name for m in signed.manifest.members if m.name not in signed.signatures]
    click.echo(f"signed as {config.name}; still to sign: {', '.join(missing) or 'nobody'}")


@federation.command("verify")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@user_errors
def federation_verify(manifest_path: Path) -> None:
    """Check that every member signed MANIFEST; print the federation id."""
    signed = load_manifest(manifest_path)
    signed.verify()
    click.echo(f"OK {signed.manifest.name} version {signed.manifest.version}: {len(signed.manifest.members)} members, all signed; federation id {signed.manifest.federation_id.hex()}")


@federation.command("show")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@user_errors
def federation_show(manifest_path: Path) -> None:
    """Print the members, the plan and who has signed."""
    signed = load_manifest(manifest_path)
    manifest = signed.manifest
    click.echo(f"federation {manifest.name} version {manifest.version}, id {manifest.federation_id.hex()}")
    for member in manifest.members:
        mark = "signed" if member.name in signed.signatures else "NOT SIGNED"
        neighbours = ", ".join(manifest.plan.neighbours[member.name])
        click.echo(f"  {member.name:<16} {member.endpoint:<26} {mark:<10} neighbours: {neighbours}")
    plan = manifest.plan
    click.echo(f"plan: {plan.rounds} rounds, protocol {plan.protocol}, topology {plan.topology}, model {plan.model}, training {plan.training}")


@federation.command("install")
@click.argument("manifest_path", type=click.Path(path_type=Path))
@SITE_OPTION
@user_errors
def federation_install(manifest_path: Path, site_dir: Path) -> None:
    """Verify MANIFEST and install it in the site, ready for `swarm-node run`."""
    from .launch import install_manifest

    signed = install_manifest(manifest_path, site_dir)
    click.echo(f"installed federation {signed.manifest.name} ({signed.manifest.federation_id.hex()[:16]}) in {site_dir}")


@main.command()
@click.option("--site", "site_dirs", required=True, multiple=True, type=click.Path(path_type=Path), help="The site directory (repeat to run several sites' nodes in this one process).")
@click.option("--insecure", is_flag=True, help="DEBUGGING ONLY: turn CurveZMQ off (plaintext, no allow-list).")
@user_errors
def run(site_dirs: tuple[Path, ...], insecure: bool) -> None:
    """Run this site's node until the plan is done or Ctrl-C. Connections are encrypted and
    authenticated with CurveZMQ; only the manifest's neighbours get through."""
    from .launch import INSECURE_WARNING, run_sites

    if insecure:
        click.echo(f"WARNING: {INSECURE_WARNING}", err=True)
    outcomes = run_sites(list(site_dirs), insecure=insecure)
    for site_dir, outcome in zip(site_dirs, outcomes):
        click.echo(f"{outcome.state} at version {outcome.published_seq}" + (f" ({site_dir})" if len(site_dirs) > 1 else ""))


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


@main.command()
@click.option("--size-mb", type=click.FloatRange(min=0.001, max=4096), default=100.0, show_default=True, help="Model size in MiB.")
@click.option("--repeats", type=click.IntRange(min=1, max=100), default=5, show_default=True, help="Timed transfers per path.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (with ratio_vs_raw_zmq).")
@user_errors
def bench(size_mb: float, repeats: int, as_json: bool) -> None:
    """Time the full model exchange path on loopback against raw pyzmq with the same bytes."""
    from .bench import format_bench, run_bench

    result = run_bench(size_mb=size_mb, repeats=repeats)
    click.echo(json.dumps(result, indent=2) if as_json else format_bench(result))
