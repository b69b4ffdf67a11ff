"""deploy/: the systemd unit and the Dockerfile agree with the code they run (entry point,
arguments, exit codes, packages, the torch that CI tests), and the unit passes
`systemd-analyze verify` where systemd is installed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodes.cli import main as node_cli
from swarm.config import tomllib
from swarm.errors import ResourceError, UsageError

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "swarm-node.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def unit_settings(text: str) -> dict[str, list[str]]:
    """"Section.Key" -> every value, in order (systemd keys may repeat; configparser refuses that)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert section and sep, f"not a unit line: {line!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def swarm_node_binary() -> str:
    beside = Path(sys.executable).parent / "swarm-node"
    found = str(beside) if beside.exists() else shutil.which("swarm-node")
    if found is None:
        pytest.skip("swarm-node is not installed as a script")
    return found


def test_unit_runs_the_node_of_its_site_and_restarts_only_what_a_restart_can_fix():
    settings = unit_settings(UNIT.read_text())
    command = shlex.split(settings["Service.ExecStart"][-1])
    assert Path(command[0]).name in pyproject()["project"]["scripts"]
    assert command[1] == "run"
    site = command[command.index("--site") + 1]
    assert settings["Service.ReadWritePaths"] == [site] and settings["Service.WorkingDirectory"] == [site]
    assert settings["Service.Restart"] == ["on-failure"]
    prevented = {int(code) for value in settings["Service.RestartPreventExitStatus"] for code in value.split()}
    assert {UsageError.exit_code, ResourceError.exit_code} <= prevented
    assert settings["Service.KillSignal"] == ["SIGTERM"]
    assert settings["Service.User"] == ["swarm"] and settings["Service.CapabilityBoundingSet"] == [""]
    # libzmq lists interfaces over netlink when it binds; without AF_NETLINK it aborts.
    assert "AF_NETLINK" in settings["Service.RestrictAddressFamilies"][-1].split()


def test_unit_command_line_is_accepted_by_the_cli():
    command = shlex.split(unit_settings(UNIT.read_text())["Service.ExecStart"][-1])
    result = CliRunner().invoke(node_cli, [*command[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "--site" in result.output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify wants ExecStart's binary to exist: point it at this environment's script.
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={swarm_node_binary()}", UNIT.read_text(), flags=re.M)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Other units of the host may draw warnings; ours must draw none (a bad value is only a warning).
    assert [line for line in result.stderr.splitlines() if UNIT.name in line] == []


def test_dockerfile_entry_point_and_command_are_the_projects():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    entrypoint = [json_list(args) for word, args in instructions if word == "ENTRYPOINT"][-1]
    command = [json_list(args) for word, args in instructions if word == "CMD"][-1]
    assert entrypoint[0] in pyproject()["project"]["scripts"]
    result = CliRunner().invoke(node_cli, [*entrypoint[1:], *command, "--help"])
    assert result.exit_code == 0, result.output
    volume = [args for word, args in instructions if word == "VOLUME"][-1]
    assert command[command.index("--site") + 1] == volume
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert any(word == "USER" and args not in ("root", "0") for word, args in instructions)


def test_dockerfile_installs_the_torch_ci_tests_and_every_package():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = dict(arg.split("=", 1) for word, arg in instructions if word == "ARG" and "=" in arg)
    ci_torch = re.search(r"torch==([\w.]+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert args["TORCH_VERSION"] == ci_torch
    required = next(r for r in pyproject()["project"]["dependencies"] if r.startswith("torch"))
    assert version_tuple(ci_torch) >= version_tuple(required.split(">=")[1])
    for extra in args["EXTRAS"].split(","):
        assert extra in pyproject()["project"]["optional-dependencies"]
    copied = {Path(source).name for word, arg in instructions if word == "COPY" for source in arg.split()[:-1]}
    packages = {pattern.rstrip("*") for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", "README.md"} <= copied
    # The root .dockerignore lets through what the Dockerfile copies.
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert packages | {"pyproject.toml", "README.md"} <= allowed


def test_deploy_readme_names_only_commands_that_exist():
    text = (ROOT / "deploy" / "README.md").read_text()
    commands = set(re.findall(r"\bswarm-node ((?:federation |log )?[a-z]+)\b(?!-)", text))
    assert commands, "no swarm-node command found"
    for command in sorted(commands):
        result = CliRunner().invoke(node_cli, [*command.split(), "--help"])
        assert result.exit_code == 0, f"swarm-node {command}: {result.output}"


def json_list(args: str) -> list[str]:
    import json

    value = json.loads(args)
    assert isinstance(value, list), f"exec form expected, got {args!r}"
    return value


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])
