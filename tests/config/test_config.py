"""config.loader: YAML + SRNODE_ overrides, errors that name the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.loader import ConfigError, load_config, parse_config


def test_issue_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        'node: {ae_title: SRNODE, host: 0.0.0.0, port: 11112, storage_dir: var/storage,\n'
        '       database_url: "sqlite:///var/srnode.db", require_known_callers: true, min_free_disk_mb: 1024}\n'
        "peers:\n  PACS: {ae_title: PACS, host: 127.0.0.1, port: 4242}\nseries: {stable_after_s: 15}\n"
    )
    cfg = load_config(path, environ={})
    assert cfg.node.port == 11112 and cfg.series.stable_after_s == 15
    assert cfg.node.storage_dir == (tmp_path / "var" / "storage").resolve()  # relative to the file
    assert cfg.node.database_url == f"sqlite:///{(tmp_path / 'var' / 'srnode.db').resolve()}"
    assert cfg.peer_by_ae("PACS ") is cfg.peers["PACS"]


def test_env_overrides(tmp_path: Path) -> None:
    cfg = parse_config({"node": {"port": 1}}, base_dir=tmp_path,
                       environ={"SRNODE_NODE__PORT": "11113", "SRNODE_NODE__REQUIRE_KNOWN_CALLERS": "false",
                                "SRNODE_SERIES__STABLE_AFTER_S": "2.5"})
    assert cfg.node.port == 11113 and cfg.node.require_known_callers is False and cfg.series.stable_after_s == 2.5


def test_env_variables_that_name_no_setting_are_ignored(tmp_path: Path) -> None:
    # CI and tools set these; they are not settings and must not become unknown keys.
    cfg = parse_config({"node": {"port": 1}}, base_dir=tmp_path,
                       environ={"SRNODE_SHARED_DIR": "/x", "SRNODE_ADMIN_TOKEN": "t", "SRNODE_BROKER_URL": "redis://h:1/0"})
    assert cfg.node.port == 1 and cfg.broker_url == "redis://h:1/0"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"node": {"port": 70000}}, "node.port"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title"),
        ({"node": {"min_free_disk_mb": -1}}, "node.min_free_disk_mb"),
        ({"nodes": {}}, "nodes"),
        ({"peers": {"PACS": {"ae_title": "PACS", "host": "h"}}}, "peers.PACS.port"),
        ({"series": {"stable_after_s": "soon"}}, "series.stable_after_s"),
        ({"node": {"tls": {"cert": "c.pem"}}}, "node.tls.key"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path, environ={})
    assert key in info.value.keys and key in str(info.value)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, environ={})


def test_node_checks_the_called_ae_title_by_default(tmp_path: Path) -> None:
    assert parse_config({}, base_dir=tmp_path, environ={}).node.require_called_ae is True


def test_models_dirs_default_beside_the_file_and_shipped(tmp_path: Path, repo_root: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert load_config(path, environ={}).models_dirs == [tmp_path.resolve() / "models", repo_root / "models"]
    path.write_text("models_dirs: [weights, /srv/models]\n")
    assert load_config(path, environ={}).models_dirs == [tmp_path.resolve() / "weights", Path("/srv/models")]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        # bicubic is x4: a x2 rule would only fail when a series is routed.
        ({"routing": [{"model": "bicubic", "scale": 2}]}, "routing.0.scale"),
        ({"models": {"m": {"arch": "lanczos", "scale": 3}}, "routing": [{"model": "m", "scale": 2}]},
         "routing.0.scale"),
        ({"routing": [{"model": "no-such-model"}]}, "routing.0.model"),
        ({"models": {"m": {"arch": "edsr"}}}, "models.m.arch"),
        ({"models": {"m": {"arch": "bicubic", "weights": "w.pth"}}}, "models.m.weights"),
        # Built-in names cannot be taken over by another model (any letter case).
        ({"models": {"bicubic": {"arch": "realesrgan", "weights": "w.pth"}}}, "models.bicubic"),
        ({"models": {"Lanczos": {"arch": "hat", "weights": "w.pth"}}}, "models.Lanczos"),
        ({"models": {"realesrgan": {"arch": "swinir", "weights": "w.pth"}}}, "models.realesrgan"),
    ],
)
def test_models_and_rules_the_engine_cannot_run_are_refused(tmp_path: Path, data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path, environ={})
    assert info.value.keys == [key] and key in str(info.value)


def test_models_the_engine_can_run_are_accepted(tmp_path: Path) -> None:
    cfg = parse_config({
        "models": {"bicubic-x2": {"arch": "bicubic", "scale": 2},
                   "bicubic": {"arch": "bicubic", "scale": 3},  # still bicubic interpolation
                   "realesrgan": {"arch": "realesrgan", "weights": "official.pth"}},  # its official weights
        "routing": [{"model": "bicubic-x2", "scale": 2}, {"model": "bicubic"}, {"model": "lanczos", "scale": 4},
                    {"model": "realesrgan"}, {"skip": True}],
    }, base_dir=tmp_path, environ={})
    assert [r.model for r in cfg.routing] == ["bicubic-x2", "bicubic", "lanczos", "realesrgan", None]


def test_config_check_refuses_a_scale_the_model_cannot_do(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from srnode.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("routing:\n  - {match: {modality: CT}, model: bicubic, scale: 2}\n")
    assert main(["config", "check", str(path)]) == 1
    assert "routing.0.scale: model 'bicubic' is x4, not x2" in capsys.readouterr().err


def test_admin_changes_get_the_same_model_checks(tmp_path: Path) -> None:
    from dicom_node.index.live_config import LiveConfig

    live = LiveConfig(parse_config({}, base_dir=tmp_path, environ={}), sessions=None)  # type: ignore[arg-type]
    for change, key in (({"routing": [{"model": "bicubic", "scale": 2}]}, "routing.0.scale"),
                        ({"models": {"bicubic": {"arch": "realesrgan", "weights": "/w.pth"}}}, "models.bicubic")):
        with pytest.raises(ConfigError) as info:
            live.with_overrides(change)
        assert info.value.keys == [key]


def test_model_checks_import_no_torch_and_match_the_engine() -> None:
    # Validation runs in `srnode config check` and in every listener process: no torch there.
    code = ("import sys; from config.loader import parse_config; "
            "parse_config({'routing': [{'model': 'lanczos', 'scale': 4}]}, environ={}); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    from sr_engine import registry
    from sr_engine.archs import ARCHS
    from sr_engine.interpolate import INTERPOLATORS

    assert registry.NETWORK_ARCHS == ARCHS and registry.INTERPOLATOR_ARCHS == tuple(INTERPOLATORS)


# --- Issue 21 item 3: combinations that validate but cannot work are said out loud ---------------

def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    from srnode.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(text)
    code = main(["config", "check", str(path)])
    return code, capsys.readouterr().out.splitlines()


def test_config_check_warns_about_a_broker_without_a_worker_and_sqlite(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _check(tmp_path, "broker_url: redis://127.0.0.1:6379/0\nworker: {embedded: false}\n", capsys)
    warned = {line.split(": ")[1] for line in out if line.startswith("warning: ")}
    assert code == 0 and out[-1] == "OK"
    assert {"worker.embedded", "node.database_url"} <= warned, out
    assert any("this node runs no worker" in line for line in out)
    assert any("SQLite with broker_url" in line and "postgresql://" in line for line in out)


def test_config_check_warns_about_a_short_heartbeat_and_a_local_storage_with_a_broker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from config.loader import file_system_type

    code, out = _check(tmp_path, "broker_url: redis://127.0.0.1:6379/0\n"
                                 "node: {database_url: 'postgresql://u:p@127.0.0.1:5432/x'}\n"
                                 "worker: {heartbeat_timeout_s: 5}\n", capsys)
    warned = {line.split(": ")[1] for line in out if line.startswith("warning: ")}
    assert code == 0 and "worker.heartbeat_timeout_s" in warned and "node.database_url" not in warned, out
    assert "worker.embedded" not in warned  # the default: the node runs its own worker on the broker
    local = file_system_type(tmp_path) not in (None, "nfs", "nfs4", "ceph")
    assert ("node.storage_dir" in warned) == local, (file_system_type(tmp_path), out)


def test_file_system_type_reads_the_deepest_mount(tmp_path: Path) -> None:
    from config.loader import file_system_type

    base = tmp_path.resolve()
    (base / "shared").mkdir()
    (base / "with space").mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nsrv:/export {base}/shared nfs4 rw 0 0\n"
                      f"srv:/x {base}/with\\040space nfs rw 0 0\n")
    assert file_system_type(base / "shared" / "storage" / "not-yet", mounts) == "nfs4"  # its existing folder
    assert file_system_type(base / "with space", mounts) == "nfs"
    assert file_system_type(base / "sharedx", mounts) == "ext4"  # a prefix of the name is not inside
    assert file_system_type(base, tmp_path / "no-such-file") is None


def test_config_check_says_only_ok_for_the_embedded_default(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _check(tmp_path, "node: {port: 11112}\n", capsys)
    assert (code, out) == (0, ["OK"])


def test_config_overrides_on_a_database_never_migrated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from srnode.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(f"node: {{database_url: 'sqlite:///{tmp_path / 'new.db'}'}}\n")
    assert main(["config", "overrides", "--config", str(path)]) == 0
    assert main(["config", "overrides", "--config", str(path), "--clear"]) == 0
    assert capsys.readouterr().out.splitlines() == ["no overrides: the file is in force"] * 2


def test_routing_rule_names_must_be_unique_in_the_file_too(tmp_path: Path) -> None:
    rules = [{"name": "ct", "match": {"modality": "CT"}, "model": "bicubic"},
             {"name": "CT", "match": {"modality": "MR"}, "model": "bicubic"}]
    with pytest.raises(ConfigError, match=r"routing\.1\.name: 'CT' is already the name of an earlier rule"):
        parse_config({"routing": rules}, base_dir=tmp_path, environ={})
    # An explicit name may not take a positional one either (jobs name their rule by it).
    with pytest.raises(ConfigError, match=r"routing\.1\.name"):
        parse_config({"routing": [{"match": {"modality": "CT"}, "model": "bicubic"},
                                  {"name": "rule-0", "match": {"modality": "MR"}, "model": "bicubic"}]},
                     base_dir=tmp_path, environ={})


@pytest.mark.parametrize("rule, key, message", [
    ({"model": "bicubic", "noise_action": "hold"}, "routing.0.noise_action", "hold needs max_noise_ratio"),
    ({"model": "bicubic", "max_noise_ratio": 0.9}, "routing.0.max_noise_ratio", "greater than 1"),
    ({"skip": True, "max_noise_ratio": 1.2}, "routing.0.max_noise_ratio", "a skip rule derives none"),
    ({"model": "bicubic", "max_noise_ratio": 1.2, "noise_action": "drop"}, "routing.0.noise_action",
     "'mark' or 'hold'"),
])
def test_noise_guard_rule_fields_are_checked_at_load(tmp_path: Path, rule: dict, key: str, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        parse_config({"routing": [rule]}, base_dir=tmp_path, environ={})
    assert info.value.keys == [key] and message in str(info.value)


def test_noise_guard_rule_round_trips_through_a_dump(tmp_path: Path) -> None:
    # The console and overrides dump rules with their defaults (noise_action: mark, no limit) and
    # validate them again: that must stay valid.
    cfg = parse_config({"routing": [{"model": "bicubic"}, {"model": "bicubic", "max_noise_ratio": 1.1,
                                                           "noise_action": "hold"}]}, base_dir=tmp_path, environ={})
    again = parse_config(cfg.model_dump(mode="json"), base_dir=tmp_path, environ={})
    assert [(r.max_noise_ratio, r.noise_action) for r in again.routing] == [(None, "mark"), (1.1, "hold")]
