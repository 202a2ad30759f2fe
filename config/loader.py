"""Load the YAML file, apply `SRNODE_...` environment overrides, validate.

Override syntax: `SRNODE_<SECTION>__<KEY>[__<KEY>...]=value`, e.g. `SRNODE_NODE__PORT=11113` or
`SRNODE_BROKER_URL=redis://127.0.0.1:6379/0`. Values are parsed as YAML scalars, so `true`, `42`
and `null` have their usual types.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.schema import SRNodeConfig
from sr_engine.registry import config_errors

ENV_PREFIX = "SRNODE_"

# The checkpoints shipped with srnode (models/ at the top of the repository).
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class ConfigError(ValueError):
    """A configuration problem, with the dotted key path(s) a user must fix."""

    def __init__(self, message: str, keys: list[str] | None = None) -> None:
        super().__init__(message)
        self.keys = keys or []


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in ("SRNODE_CONFIG",):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        # Only names of settings: SRNODE_SHARED_DIR, SRNODE_ADMIN_TOKEN and other variables that
        # tools and tests use must not turn into unknown keys.
        if not path or path[0] not in SRNodeConfig.model_fields:
            continue
        target = data
        for part in path[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = {}
                target[part] = child
            target = child
        target[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return data


def _resolve_relative_paths(cfg: SRNodeConfig, base_dir: Path) -> SRNodeConfig:
    # Relative paths in a config file mean "next to this file", wherever srnode is started from.
    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return (base_dir / p).resolve()

    cfg.node.storage_dir = fix(cfg.node.storage_dir)  # type: ignore[assignment]
    url = cfg.node.database_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
        cfg.node.database_url = "sqlite:///" + str(fix(Path(url[len("sqlite:///"):])))
    if cfg.node.tls:
        cfg.node.tls.cert = fix(cfg.node.tls.cert)  # type: ignore[assignment]
        cfg.node.tls.key = fix(cfg.node.tls.key)  # type: ignore[assignment]
        cfg.node.tls.ca = fix(cfg.node.tls.ca)
    for entry in cfg.models.values():
        entry.weights = fix(entry.weights)
    dirs = cfg.models_dirs if cfg.models_dirs is not None else [Path("models"), SHIPPED_MODELS_DIR]
    # resolve(): symlinks too, so that a confinement check compares real locations.
    cfg.models_dirs = list(dict.fromkeys((base_dir / d).resolve() for d in dirs))
    return cfg


def _errors(pairs: list[tuple[str, str]]) -> ConfigError:
    return ConfigError("invalid configuration:\n  " + "\n  ".join(f"{k}: {m}" for k, m in pairs),
                       [k for k, _ in pairs])


def _format_errors(exc: ValidationError) -> ConfigError:
    return _errors([(".".join(str(p) for p in err["loc"]) or "(top level)", err["msg"]) for err in exc.errors()])


def _check_models(cfg: SRNodeConfig) -> None:
    # Model names, architectures and rule scales need the SR registry's knowledge (names only:
    # importing it loads no torch).
    found = list(config_errors(cfg.models, cfg.routing))
    if found:
        raise _errors(found)


# File systems that other hosts can mount too (fuse.* covers sshfs, s3fs, glusterfs clients...).
SHARED_FILE_SYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs",
                                 "beegfs", "ocfs2", "gfs2", "9p", "virtiofs"})
# Below this a live worker in a long CUDA call or a swap storm loses its job to another worker.
MIN_HEARTBEAT_TIMEOUT_S = 10.0


def file_system_type(path: Path, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The type of the file system holding `path` (its deepest existing folder), None if unknown."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        lines = mounts.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None  # not Linux: no warning rather than a wrong one
    real = str(path.resolve())
    best: tuple[str, str | None] = ("", None)
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best[1]


def deployment_warnings(cfg: SRNodeConfig) -> list[tuple[str, str]]:
    """(key, why) for settings that validate but may not work together: shown by `srnode config
    check` and logged when the node starts. docs/pipeline.md, "Deployment checks"."""
    found: list[tuple[str, str]] = []
    if cfg.broker_url is None:
        if not cfg.worker.embedded:
            found.append(("worker.embedded", ("false without broker_url: this node runs no worker, and only an "
                          "`srnode worker` on this host with this configuration can take its jobs")))
        return found
    if not cfg.worker.embedded:
        found.append(("worker.embedded", ("false with broker_url: this node runs no worker; jobs wait in the broker "
                      "until an `srnode worker` takes them (the node logs it, and /readyz shows it, when queued "
                      "jobs find no healthy worker)")))
    if cfg.node.database_url.startswith("sqlite"):
        found.append(("node.database_url", ("SQLite with broker_url: workers on other hosts cannot share an SQLite "
                      "index (its locking is unsafe over a network file system); keep every worker on this host "
                      "or use postgresql://")))
    fs_type = file_system_type(Path(cfg.node.storage_dir))
    if fs_type is not None and fs_type not in SHARED_FILE_SYSTEMS and not fs_type.startswith("fuse"):
        found.append(("node.storage_dir", (f"on a local file system ({fs_type}): workers on other hosts need this "
                      "folder mounted at the same path (NFS, CephFS...), or they refuse jobs")))
    if cfg.worker.heartbeat_timeout_s < MIN_HEARTBEAT_TIMEOUT_S:
        found.append(("worker.heartbeat_timeout_s", (f"{cfg.worker.heartbeat_timeout_s:g} s: a live worker that "
                      "stalls this long (a slow slice, swapping, a network hiccup) has its job taken by another; "
                      f"use at least {MIN_HEARTBEAT_TIMEOUT_S:g} s (docs/pipeline.md, sizing)")))
    return found


def parse_config(
    data: Mapping[str, Any] | None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> SRNodeConfig:
    """Validate an already-parsed mapping (environment overrides applied on top)."""
    merged = _apply_env_overrides(dict(data or {}), os.environ if environ is None else environ)
    try:
        cfg = SRNodeConfig.model_validate(merged)
    except ValidationError as exc:
        raise _format_errors(exc) from None
    _check_models(cfg)
    return _resolve_relative_paths(cfg, (base_dir or Path.cwd()).resolve())


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> SRNodeConfig:
    """Read, override and validate a YAML configuration file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    return parse_config(data, base_dir=file.parent, environ=environ)
