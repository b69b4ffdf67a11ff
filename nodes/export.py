"""`swarm-node export`: a logged model version out of the site directory, in a standard
format, with a model card that ties it to the federation's signed log.

Formats:
- `safetensors`: the model's tensors (shared and this site's local ones);
- `torchscript`: the model traced on an input of the plan's shape (loads with
  `torch.jit.load`, no swarm or model code needed);
- `onnx`: through torch's exporter, unoptimised so that every weight stays a named
  initializer with its exact bytes (optional extra `export`: onnx, onnxscript).

Every format carries the card (JSON) and the names of the shared tensors in their logged
order, so `digest_of_export` recomputes the model digest from the file's own tensors and
`swarm-node audit --model FILE` finds the log entry that holds it. The card is also written
beside the file as FILE.card.json and FILE.card.md. The digest covers the shared tensors
only: tensors a site keeps local (FedBN, partial sharing) are this site's, never logged."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from swarm.atomic import write_atomic
from swarm.checkpoint import CheckpointError, load_checkpoint
from swarm.errors import ConfigError, LogError, UsageError
from swarm.tensors import flatten_state, model_digest, rebuild_state

from .audit import verify_sites
from .learner import Task
from .models import build_model, file_sha256, without_initial_weights
from .plan import task_input_shape
from .provenance import ModelRef, trace
from .site import SiteDir

FORMATS = ("safetensors", "torchscript", "onnx")
CARD_KEY = "swarm.card"  # where each format keeps the card
ORDER_KEY = "swarm.shared"  # the shared tensors' names, in the logged order
EXTRA_KEY = "swarm.unused"  # onnx: logged tensors the graph does not use (e.g. BatchNorm counters)
TORCHSCRIPT_CARD = "swarm-card.json"


class ExportError(UsageError):
    """A file given as an export that is not one of ours, or not whole (a damaged log or
    checkpoint at export time is a LogError instead: exit 1)."""


@dataclass(frozen=True)
class Exported:
    path: Path
    card: dict[str, Any]


def export_model(site_root: Path, out: Path, fmt: str, version: int | None = None) -> Exported:
    """Write version `version` (default: the site's latest) of the site's own model to `out`."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another path")
    site = SiteDir(site_root)
    config = site.load_config()
    seqs = site.checkpoint_seqs()
    if not seqs:
        raise ConfigError(f"{site.root}: this site has published no model yet; run its node first")
    seq = seqs[-1] if version is None else version
    if seq not in seqs:
        raise ConfigError(f"--version {seq}: {site.root} holds versions {seqs[0]} to {seqs[-1]}; choose one of those "
                          f"(see `swarm-node log show {site.log_path}`)")
    report = verify_sites([site.root])  # the site's log and checkpoints, checked as the audit does
    failures = [f for f in report.failures if f.author in ("", config.name)]
    if failures:
        raise LogError("log_does_not_verify", f"{failures[0]}; run `swarm-node audit {site.root}`", str(site.log_path))
    provenance = trace(report, ModelRef(f"{config.name}#{seq}", author=config.name, seq=seq))
    entry = provenance.model.entry
    own = next((s.manifest for s in report.sites if s.site.root.resolve() == site.root.resolve()), None)
    if entry is None or own is None:
        raise ConfigError(f"{site.root}: version {seq} is not in this site's log; see `swarm-node log show {site.log_path}`")
    shared = _checked_checkpoint(site.checkpoint_path(seq), entry.body.digest)
    local_path = site.local_checkpoint_path(seq)
    local = rebuild_state(load_checkpoint(local_path, verify=True)[0], copy=True) if local_path.exists() else {}
    plan = own.plan
    shape = task_input_shape(plan.task)
    model = _model(plan, shape, shared | local)
    card = _card(config.name, own, entry, provenance, plan, shape, fmt, list(shared), sorted(local), config.data)
    writer = {"safetensors": _write_safetensors, "torchscript": _write_torchscript, "onnx": _write_onnx}[fmt]
    writer(model, shape, card, out)
    card["file_sha256"] = file_sha256(out)
    write_atomic(out.with_name(out.name + ".card.json"), (json.dumps(card, indent=2) + "\n").encode())
    write_atomic(out.with_name(out.name + ".card.md"), card_markdown(card).encode())
    return Exported(out, card)


def _checked_checkpoint(path: Path, digest: bytes) -> dict[str, torch.Tensor]:
    try:
        flat, stored, _meta = load_checkpoint(path, verify=True)
    except (CheckpointError, OSError) as exc:
        raise LogError("bad_checkpoint", f"{exc}; restore it from backup", str(path)) from None
    if stored != digest:
        raise LogError("digest_mismatch", f"holds model {stored.hex()[:16]}, the log says {digest.hex()[:16]}; restore it from backup", str(path))
    return rebuild_state(flat, copy=True)


def _model(plan: Any, shape: tuple[int, ...], state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """The plan's model holding `state` (no initial weights file needed: every tensor is given)."""
    task = Task.from_plan(plan.model, plan.training, plan.merge)
    model = build_model(task.model_name, without_initial_weights(task.model_params), shape, int(plan.task["num_classes"]), task.init_seed)
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


def _card(site: str, manifest: Any, entry: Any, provenance: Any, plan: Any, shape: tuple[int, ...], fmt: str,
          shared: list[str], local: list[str], data: Mapping[str, Any]) -> dict[str, Any]:
    body = entry.body
    contributions = provenance.contributions()
    missing = [v.label for v in provenance.problems]
    return {
        "format": fmt,
        "federation": {"name": manifest.name, "id": manifest.federation_id.hex(), "manifest_version": manifest.version},
        "version": {"author": site, "seq": body.seq, "round": body.round, "entry_hash": entry.hash.hex(),
                    "model_digest": body.digest.hex(), "samples": body.samples, "published_at": body.timestamp},
        "model": {"name": plan.model.get("name", "mlp"), "parameters": {k: v for k, v in plan.model.items() if k != "name"},
                  "input_shape": list(shape), "num_classes": plan.task["num_classes"], "kind": plan.task.get("kind", "classification"),
                  **({"classes": list(data["classes"])} if data.get("classes") else {}),
                  "shared_tensors": len(shared), "local_tensors": local},
        "metrics": dict(body.metrics),
        "provenance": {
            "versions": len(provenance.versions),
            "complete": not missing,
            "missing": missing[:20],
            "sites": {author: {"versions": c.versions, "samples": max(c.samples_per_version)} for author, c in contributions.items()},
        },
        ORDER_KEY: shared,
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    version, federation, model, provenance = card["version"], card["federation"], card["model"], card["provenance"]
    lines = [
        f"# Model card: {federation['name']} — {version['author']}#{version['seq']}",
        "",
        f"- Federation: {federation['name']} (`{federation['id'][:16]}`, manifest version {federation['manifest_version']})",
        f"- Version: {version['author']}#{version['seq']}, round {version['round']}, trained on {version['samples']} samples at {version['author']}",
        f"- Log entry hash: `{version['entry_hash']}`",
        f"- Model digest (BLAKE3 over the shared tensors): `{version['model_digest']}`",
        f"- File: {card['format']}, sha256 `{card.get('file_sha256', '?')}`",
        f"- Model: {model['name']} {json.dumps(model['parameters'])}, input {model['input_shape']}, {model['num_classes']} classes"
        + (f" ({', '.join(model['classes'])})" if model.get("classes") else ""),
        *([f"- Tensors kept local to {version['author']} (not logged): {', '.join(model['local_tensors'])}"] if model["local_tensors"] else []),
        "",
        "## Metrics at publication (this site's own test split)",
        "",
        *[f"- {key}: {value:.4f}" for key, value in sorted(card["metrics"].items())],
        "",
        "## Provenance",
        "",
        f"{provenance['versions']} versions in its ancestry"
        + ("" if provenance["complete"] else f"; {len(provenance['missing'])}+ not in this site's logs (audit with every site's directory for the rest)"),
        "",
        "| site | versions | samples per version |",
        "|---|---|---|",
        *[f"| {site} | {share['versions']} | {share['samples']} |" for site, share in provenance["sites"].items()],
        "",
        "Check it: `swarm-node audit SITE... --model FILE` recomputes the digest from the file and finds its log entry.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writers


def _card_text(card: Mapping[str, Any]) -> str:
    return json.dumps(dict(card), sort_keys=True)


def _example(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros((1, *shape), dtype=torch.float32)


def _write_safetensors(model: torch.nn.Module, shape: tuple[int, ...], card: Mapping[str, Any], out: Path) -> None:
    from safetensors.torch import save

    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    write_atomic(out, save(state, metadata={CARD_KEY: _card_text(card), ORDER_KEY: json.dumps(card[ORDER_KEY])}))


def _write_torchscript(model: torch.nn.Module, shape: tuple[int, ...], card: Mapping[str, Any], out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+ deprecates TorchScript; it still loads everywhere
        try:
            traced = torch.jit.trace(model, _example(shape), check_trace=False)
        except Exception as exc:  # a model torch cannot trace
            raise ConfigError(f"--format torchscript: torch cannot trace {card['model']['name']} ({' '.join(str(exc).split())[:160]}); "
                              "use --format safetensors or onnx") from None
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_CARD: _card_text(card)})
    write_atomic(out, buffer.getvalue())


def _write_onnx(model: torch.nn.Module, shape: tuple[int, ...], card: Mapping[str, Any], out: Path) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401 (torch's exporter needs it)
    except ImportError:
        raise ConfigError('--format onnx: needs the optional extra: pip install "swarm-hospitals[export]"') from None
    from safetensors.torch import save

    with tempfile.TemporaryDirectory() as scratch, _quiet_exporter():
        path = Path(scratch) / "model.onnx"
        try:
            batch = {0: torch.export.Dim("batch", min=1, max=1 << 16)}
            torch.onnx.export(model, (_example(shape).expand(2, *shape),), str(path), dynamo=True, optimize=False, external_data=False,
                              dynamic_shapes=(batch,), input_names=["features" if len(shape) == 1 else "image"], output_names=["scores"])
        except Exception as exc:
            raise ConfigError(f"--format onnx: torch cannot export {card['model']['name']} ({' '.join(str(exc).split())[:160]}); "
                              "use --format safetensors") from None
        document = onnx.load(str(path))
    present = {init.name for init in document.graph.initializer}
    state = model.state_dict()
    unused = {name: state[name].detach().contiguous() for name in card[ORDER_KEY] if name not in present}
    for key, value in ((CARD_KEY, _card_text(card)), (ORDER_KEY, json.dumps(card[ORDER_KEY])),
                       (EXTRA_KEY, base64.b64encode(save(unused)).decode() if unused else "")):
        document.metadata_props.add(key=key, value=value)
    write_atomic(out, document.SerializeToString())


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The ONNX exporter's progress lines, log notes and warnings are not the user's concern."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --------------------------------------------------------------------------- reading back


def read_export(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(card, the shared tensors in their logged order) from an exported file, whatever its
    format; ExportError if it is not one of ours or is damaged."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise ConfigError(f"--model {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if zipfile.is_zipfile(path):
            card, tensors = _read_torchscript(path)
        elif len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:  # safetensors' JSON header
            card, tensors = _read_safetensors(path)
        else:
            card, tensors = _read_onnx(path)
    except ExportError:
        raise
    except Exception as exc:  # a damaged or foreign file
        raise ExportError(f"{path}: not a model exported by swarm-node export ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    order = card.get(ORDER_KEY)
    if not isinstance(order, list) or any(name not in tensors for name in order):
        missing = [n for n in order or [] if n not in tensors][:3]
        raise ExportError(f"{path}: the file lacks logged tensors {missing or '(no tensor list)'}; it was changed after export")
    return card, {name: tensors[name] for name in order}


def digest_of_export(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The model digest of the file's own tensors (recomputed, not the card's claim) and its card."""
    card, shared = read_export(path)
    return model_digest(flatten_state(shared)), card


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return _card_from(metadata.get(CARD_KEY), path), tensors


def _read_torchscript(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    extra = {TORCHSCRIPT_CARD: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return _card_from(extra[TORCHSCRIPT_CARD], path), {k: v.detach() for k, v in module.state_dict().items()}


def _read_onnx(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ConfigError('--model: reading an ONNX file needs the optional extra: pip install "swarm-hospitals[export]"') from None
    from safetensors.torch import load

    document = onnx.load(str(path))
    props = {p.key: p.value for p in document.metadata_props}
    tensors = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in document.graph.initializer}
    if props.get(EXTRA_KEY):
        tensors |= load(base64.b64decode(props[EXTRA_KEY]))
    return _card_from(props.get(CARD_KEY), path), tensors


def _card_from(text: Any, path: Path) -> dict[str, Any]:
    if not text:
        raise ExportError(f"{path}: no swarm model card inside; export it with `swarm-node export`")
    card = json.loads(text)
    if not isinstance(card, dict):
        raise ExportError(f"{path}: its model card is not a JSON object")
    return card
