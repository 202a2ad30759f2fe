"""Models loaded once per worker process, keyed by (name, device)."""
from __future__ import annotations

import logging
import threading

from config.schema import SRNodeConfig
from sr_engine import registry
from sr_engine.memory import default_budget_mb

log = logging.getLogger(__name__)

# Module-level on purpose: one cache per worker process, shared by its jobs (solo or threads pool).
_CACHE: dict[tuple[str, str], registry.LoadedModel] = {}
_LOCK = threading.Lock()
# Jobs that may run at once in this process (`srnode worker --concurrency` overrides the config);
# they share the memory budget, so each plans for its share.
_CONCURRENT: int | None = None


def set_concurrency(jobs: int) -> None:
    """Tell the cache how many jobs this process runs at once (before the first model is loaded)."""
    global _CONCURRENT
    _CONCURRENT = max(1, int(jobs))


def memory_budget_mb(cfg: SRNodeConfig) -> int:
    """The process's memory budget: `worker.max_memory_mb`, or the machine-dependent default."""
    return cfg.worker.max_memory_mb or default_budget_mb()


def get_model(cfg: SRNodeConfig, name: str, device: str) -> registry.LoadedModel:
    """The loaded model `name` on `device`, building it on first use in this process."""
    key = (name, device)
    with _LOCK:
        if key not in _CACHE:
            spec = registry.resolve(name, cfg.models)
            w = cfg.worker
            # held_slices: the job's writer thread keeps one chunk (batch_size upscaled slices)
            # while the next chunk is inferred (workers/process.py), so the plan leaves room for it.
            _CACHE[key] = registry.load(spec, device, tile=w.tile_size or None, overlap=w.tile_overlap,
                                         batch=w.batch_size, precision=w.precision,
                                         max_memory_mb=memory_budget_mb(cfg), held_slices=w.batch_size,
                                         concurrent=_CONCURRENT or w.concurrency)
            log.info("loaded model %s on %s (sha256 %s)", name, device, _CACHE[key].checkpoint_sha256[:12])
        return _CACHE[key]


def clear() -> None:
    """Forget loaded models (tests)."""
    with _LOCK:
        _CACHE.clear()


def preload(cfg: SRNodeConfig, names: list[str], device: str) -> threading.Thread:
    """Load `names` in a background thread, so the first job after start-up does not wait for it.

    A job that arrives meanwhile waits on the cache lock instead of loading a second copy; a model
    that fails to load here is only logged (its jobs then fail with the loader's own message).
    """
    def run() -> None:
        for name in names:
            try:
                get_model(cfg, name, device)
            except Exception as exc:  # noqa: BLE001 - the job path reports it properly
                log.warning("could not preload model %s on %s: %s", name, device, exc)

    thread = threading.Thread(target=run, name="srnode-model-preload", daemon=True)
    thread.start()
    return thread
