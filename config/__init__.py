"""The one place that parses srnode's YAML configuration (pydantic model + loader)."""
from config.loader import ConfigError, load_config, parse_config
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

__all__ = [
    "AdminConfig",
    "ConfigError",
    "ModelEntry",
    "NodeConfig",
    "OutputConfig",
    "PeerConfig",
    "RoutingMatch",
    "RoutingRule",
    "SRNodeConfig",
    "SeriesConfig",
    "TLSConfig",
    "WorkerConfig",
    "load_config",
    "parse_config",
]
