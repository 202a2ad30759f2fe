"""The one place that parses srnode's YAML configuration (pydantic model + loader)."""
from config.schema import (
    AdminConfig,
    ModelEntry,
    NodeConfig,
    OutputConfig,
    PeerConfig,
    RoutingMatch,
    RoutingRule,
    SeriesConfig,
    SRNodeConfig,
    TLSConfig,
    WorkerConfig,
)
from config.loader import ConfigError, load_config, parse_config

__all__ = [
    "AdminConfig",
    "ConfigError",
    "ModelEntry",
    "NodeConfig",
    "OutputConfig",
    "PeerConfig",
    "RoutingMatch",
    "RoutingRule",
    "SeriesConfig",
    "SRNodeConfig",
    "TLSConfig",
    "WorkerConfig",
    "load_config",
    "parse_config",
]
