"""Models loaded once per worker process, keyed by (name, device)."""
from __future__ import annotations

import logging
import threading

from config.schema import SRNodeConfig
from sr_engine import registry

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str], registry.LoadedModel] = {}
_LOCK = threading.Lock()


def get_model(cfg: SRNodeConfig, name: str, device: str) -> registry.LoadedModel:
    """The loaded model `name` on `device`, building it on first use in this process."""
    key = (name, device)
    with _LOCK:
        if key not in _CACHE:
            spec = registry.resolve(name, cfg.models)
            w = cfg.worker
            _CACHE[key] = registry.load(spec, device, tile=w.tile_size or None, overlap=w.tile_overlap, batch=w.batch_size)
            log.info("loaded model %s on %s (sha256 %s)", name, device, _CACHE[key].checkpoint_sha256[:12])
        return _CACHE[key]


def clear() -> None:
    """Forget loaded models (tests)."""
    with _LOCK:
        _CACHE.clear()
