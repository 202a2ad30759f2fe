"""Deployment files are linted by real tools: docker compose / docker-compose `config`, kubectl
kustomize + kubernetes-validate (the official OpenAPI schemas, strict), systemd-analyze verify.
Each linter is also shown a broken file, so a check that cannot fail would be noticed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import load_config
from srnode.cli import build_parser

COMPOSE_ENV = {"SRNODE_ADMIN_TOKEN": "test-token-0123456789abcdef", "POSTGRES_PASSWORD": "pw"}


@pytest.fixture(scope="module")
def deploy(repo_root: Path) -> Path:
    return repo_root / "deploy"


def _compose_cmd() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _compose_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (apt-get install docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    return subprocess.run([*cmd, "-f", str(path), "--profile", "trial", "config"], capture_output=True, text=True,
                          env={**clean, **env}, cwd=path.parent, timeout=60)


def test_compose_config_is_valid(deploy: Path) -> None:
    result = _compose_config(deploy / "compose.yaml", COMPOSE_ENV)
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = yaml.safe_load(result.stdout)
    services = rendered["services"]
    assert {"node", "worker", "redis", "postgres", "orthanc", "migrate"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["node"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"][:2] == ["db", "upgrade"]
    for name in ("node", "migrate", "worker"):
        env = services[name]["environment"]
        assert env["SRNODE_BROKER_URL"] == "redis://redis:6379/0"
        assert yaml.safe_load(env["SRNODE_ADMIN__TOKENS"]) == {COMPOSE_ENV["SRNODE_ADMIN_TOKEN"]: "admin"}


def test_compose_optional_orthanc_is_a_profile(deploy: Path) -> None:
    raw = yaml.safe_load((deploy / "compose.yaml").read_text())
    assert raw["services"]["orthanc"]["profiles"] == ["trial"]
    assert all("profiles" not in s for n, s in raw["services"].items() if n != "orthanc")


def test_compose_linter_rejects_broken_files(deploy: Path, tmp_path: Path) -> None:
    assert _compose_config(deploy / "compose.yaml", {}).returncode != 0  # secrets are mandatory
    broken = yaml.safe_load((deploy / "compose.yaml").read_text())
    broken["services"]["node"]["ports"] = "11112"  # must be a list
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert _compose_config(path, COMPOSE_ENV).returncode != 0


def test_container_config_loads_with_compose_environment(deploy: Path) -> None:
    env = {"SRNODE_NODE__DATABASE_URL": "postgresql://srnode:pw@postgres:5432/srnode",
           "SRNODE_BROKER_URL": "redis://redis:6379/0",
           "SRNODE_ADMIN__TOKENS": '{"abc": admin}'}
    cfg = load_config(deploy / "srnode.yaml", environ=env)
    assert cfg.broker_url == "redis://redis:6379/0" and cfg.admin.tokens == {"abc": "admin"}
    assert cfg.admin.host == "0.0.0.0" and cfg.node.port == 11112 and not cfg.worker.embedded


def _kustomize(deploy: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(deploy / "kubernetes")], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    kust = yaml.safe_load((deploy / "kubernetes" / "kustomization.yaml").read_text())
    docs = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((deploy / "kubernetes" / name).read_text()) if d]
    return docs


def _validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_kubernetes_manifests_validate(deploy: Path) -> None:
    docs = _kustomize(deploy)
    example = yaml.safe_load((deploy / "kubernetes" / "secret.example.yaml").read_text())
    for doc in [*docs, example]:
        _validate(doc)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    worker = by[("Deployment", "srnode-worker")]["spec"]["template"]["spec"]
    assert worker["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    dicom = by[("Service", "srnode-dicom")]["spec"]
    node = by[("Deployment", "srnode-node")]["spec"]["template"]
    assert dicom["selector"].items() <= node["metadata"]["labels"].items()
    assert dicom["ports"][0]["port"] == 11112
    assert node["spec"]["initContainers"][0]["args"][:2] == ["db", "upgrade"]
    # The ConfigMap carries exactly deploy/srnode.yaml (no drift between compose and Kubernetes).
    cm = by[("ConfigMap", "srnode-config")]["data"]["srnode.yaml"]
    assert cm == (deploy / "srnode.yaml").read_text()


def test_redis_broker_persists_its_queue(deploy: Path) -> None:
    """Issue 21: a Redis restarted without its data loses every queued message."""
    by = {(d["kind"], d["metadata"]["name"]): d for d in _kustomize(deploy)}
    pod = by[("Deployment", "redis")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--dir") + 1] == "/data"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in by
    redis = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]["redis"]
    assert "--appendonly" in redis["command"] and any(v.endswith(":/data") for v in redis["volumes"])


def test_kubernetes_validator_rejects_broken_manifest(deploy: Path) -> None:
    import kubernetes_validate

    doc = next(d for d in _kustomize(deploy) if d["metadata"]["name"] == "srnode-worker")
    doc["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(doc)


def _verify_units(units: list[Path], tmp_path: Path) -> list[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    out = subprocess.run([analyze, "verify", "--man=no", *map(str, units)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    # The install location (/opt/srnode/venv) does not exist on a build machine; everything else counts.
    return [line for line in (out.stdout + out.stderr).splitlines()
            if line.strip() and "/opt/srnode/venv/bin/srnode is not executable" not in line]


def test_systemd_units_verify(deploy: Path, tmp_path: Path) -> None:
    node = tmp_path / "srnode.service"
    shutil.copy(deploy / "systemd" / "srnode.service", node)
    worker = tmp_path / "srnode-worker@0.service"  # an instance of the template
    shutil.copy(deploy / "systemd" / "srnode-worker@.service", worker)
    assert _verify_units([node, worker], tmp_path) == []
    text = node.read_text()
    assert "ExecStartPre=/opt/srnode/venv/bin/srnode db upgrade" in text


def test_systemd_verify_rejects_broken_unit(deploy: Path, tmp_path: Path) -> None:
    unit = tmp_path / "srnode.service"
    unit.write_text((deploy / "systemd" / "srnode.service").read_text().replace("ExecStart=", "ExecStrat="))
    assert any("ExecStrat" in line for line in _verify_units([unit], tmp_path))


def _cli_args(line: str) -> list[str]:
    return yaml.safe_load(line.split(None, 1)[1])


@pytest.mark.parametrize("image", ["node", "worker"])
def test_dockerfiles_copy_existing_paths_and_run_real_commands(deploy: Path, repo_root: Path, image: str) -> None:
    text = (deploy / "docker" / f"{image}.Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base is not None
    assert ("nvidia/cuda" in base.group(1)) == (image == "worker")  # CUDA only in the worker
    for m in re.finditer(r"^COPY (?!--from)(\S+)", text, re.M):
        for src in m.group(1).split():
            assert (repo_root / src).exists(), f"{image}.Dockerfile copies missing {src}"
    for m in re.finditer(r"^COPY (.+) \S+$", text, re.M):
        for src in m.group(1).split():
            assert (repo_root / src).exists(), f"{image}.Dockerfile copies missing {src}"
    cmd = _cli_args(re.search(r"^CMD .+$", text, re.M).group(0))
    assert _cli_args(re.search(r"^ENTRYPOINT .+$", text, re.M).group(0)) == ["srnode"]
    args = build_parser().parse_args(cmd)  # the image's command is one the CLI accepts
    assert args.func is not None and args.config == "/etc/srnode/srnode.yaml"


def test_shipped_model_in_container_config_matches_repo(deploy: Path, repo_root: Path) -> None:
    from sr_engine.archs import file_sha256

    cfg = load_config(deploy / "srnode.yaml", environ={})
    for name, entry in cfg.models.items():
        # The images copy models/ to /opt/srnode/models.
        local = repo_root / Path(entry.weights).relative_to("/opt/srnode")  # type: ignore[arg-type]
        assert local.is_file(), f"models.{name}.weights: {local} is not in the repository"
        assert file_sha256(local) == entry.sha256, f"models.{name}.sha256 is stale"
