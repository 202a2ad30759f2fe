"""Pydantic model of srnode's YAML configuration.

Every section validates on creation, so a bad file fails at load time with the key's path,
never later inside a DICOM handler.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from sr_engine.model_entry import ModelEntry  # the engine owns it: usable without the node


def _check_ae_title(value: str) -> str:
    # PS3.5: AE titles are at most 16 characters of the default repertoire, no backslash or
    # control characters, and not all spaces.
    if not value.strip():
        raise ValueError("AE title must not be empty")
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is longer than 16 characters")
    if any(ord(c) < 32 or ord(c) > 126 or c == "\\" for c in value):
        raise ValueError(f"AE title {value!r} has characters outside the DICOM default repertoire")
    return value.strip()


AETitle = Annotated[str, AfterValidator(_check_ae_title)]


class _Strict(BaseModel):
    # A typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class TLSConfig(_Strict):
    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False


class NodeConfig(_Strict):
    ae_title: AETitle = "SRNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    storage_dir: Path = Path("var/storage")
    database_url: str = "sqlite:///var/srnode.db"
    require_known_callers: bool = True
    # Only associations called `ae_title` are accepted (Orthanc's DicomCheckCalledAet).
    require_called_ae: bool = True
    min_free_disk_mb: int = Field(1024, ge=0)
    max_associations: int = Field(16, ge=1)
    # Listener processes sharing node.port (SO_REUSEPORT, Linux); each has its own DB connections.
    processes: int = Field(1, ge=1, le=64)
    # Seconds to wait for in-flight associations on SIGTERM before closing them.
    shutdown_grace_s: float = Field(30.0, ge=0)
    tls: TLSConfig | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class PeerConfig(_Strict):
    """A DIMSE peer (C-STORE destination, C-MOVE destination, caller)."""

    # Left out of dumps: DIMSE is what a peer without `kind` is, as before DICOMweb peers existed.
    kind: Literal["dimse"] = Field("dimse", exclude=True)
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    # Before sending again an instance whose C-STORE response never arrived (crash, broken
    # association), ask the peer by C-FIND whether it has it. Peers without C-FIND get it again.
    confirm_in_doubt: bool = True


class DicomwebAuth(_Strict):
    """How the node signs in to a DICOMweb peer. Secrets are named, never written in the config
    (the admin API shows peers to `read` tokens): `token_env`/`password_env` name environment variables."""

    type: Literal["bearer", "basic"] = "bearer"
    token_env: str | None = None
    username: str | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> DicomwebAuth:
        if self.type == "bearer" and not self.token_env:
            raise ValueError("bearer auth needs token_env (the environment variable holding the token)")
        if self.type == "basic" and not (self.username and self.password_env):
            raise ValueError("basic auth needs username and password_env")
        return self


class DicomwebPeerConfig(_Strict):
    """A DICOMweb peer: derived instances go to it by STOW-RS (dicom_node/outbox/stow.py)."""

    kind: Literal["dicomweb"]
    url: str  # service root, e.g. http://pacs:8042/dicom-web (…/studies is appended)
    auth: DicomwebAuth | None = None
    timeout_s: float = Field(60.0, gt=0)
    # Instances per STOW-RS request, and bytes per request (whichever is reached first).
    batch_instances: int = Field(32, ge=1, le=1000)
    max_request_mb: float = Field(64.0, gt=0)
    # Before sending again an instance whose STOW-RS answer never arrived, ask by QIDO-RS.
    confirm_in_doubt: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")


def _peer_of_kind(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # Chosen by `kind` (absent: dimse), then validated by that model alone, so that errors name the
    # real key (peers.PACS.port) rather than every member of the union.
    if isinstance(value, (PeerConfig, DicomwebPeerConfig)):
        return value
    kind = value.get("kind", "dimse") if isinstance(value, dict) else "dimse"
    return (DicomwebPeerConfig if kind == "dicomweb" else PeerConfig).model_validate(value)


AnyPeer = Annotated[PeerConfig | DicomwebPeerConfig, WrapValidator(_peer_of_kind)]


class SeriesConfig(_Strict):
    stable_after_s: float = Field(15.0, ge=0)
    # How often the assembler looks for series that have gone quiet.
    check_interval_s: float = Field(1.0, gt=0)


class RoutingMatch(_Strict):
    """All given fields must match (AND). Strings compare case-insensitively."""

    modality: str | list[str] | None = None
    calling_ae: str | list[str] | None = None
    body_part: str | list[str] | None = None
    series_description: str | None = None  # regular expression, re.search
    rows: int | None = None
    columns: int | None = None
    min_rows: int | None = None
    max_rows: int | None = None
    # How the series arrived: C-STORE ("dimse") or STOW-RS ("dicomweb").
    source: Literal["dimse", "dicomweb"] | None = None

    @field_validator("series_description")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class RoutingRule(_Strict):
    # Shown in the console and recorded on jobs (job.rule_name); without it the rule is called by
    # its position, `rule-<index>`, which changes when a rule is inserted above it.
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    match: RoutingMatch = Field(default_factory=RoutingMatch)
    model: str | None = None
    scale: int | None = Field(None, ge=1, le=8)
    destinations: list[str] = Field(default_factory=list)
    priority: Literal["stat", "routine"] = "routine"
    skip: bool = False
    passthrough: bool = False
    on_demand: bool = False
    # Noise guard (docs/pipeline.md): a derived CT slice whose flat-tissue noise exceeds lanczos's
    # by more than this factor (e.g. 1.10) is marked in its DerivationDescription (`mark`), or
    # the whole derived series is held back from its destinations for review (`hold`). None: the
    # ratios are still measured and shown, nothing is marked or held.
    max_noise_ratio: float | None = Field(None, gt=1.0, le=10.0)
    noise_action: Literal["mark", "hold"] = "mark"

    @model_validator(mode="after")
    def _model_unless_skip(self) -> "RoutingRule":
        if not self.skip and not self.model:
            raise ValueError("a rule needs a model unless skip: true")
        return self

    # Field validators (not a model validator) so that errors name the key, e.g. routing.0.noise_action.
    @field_validator("max_noise_ratio")
    @classmethod
    def _limit_needs_a_derived_series(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("skip"):
            raise ValueError("max_noise_ratio applies to derived series; a skip rule derives none")
        return value

    @field_validator("noise_action")
    @classmethod
    def _hold_needs_a_limit(cls, value: str, info: ValidationInfo) -> str:
        # `hold` without a limit would never hold: say so when the rule is written. (A `mark`
        # without one is the default every dumped rule carries, so it must stay valid.)
        if value == "hold" and info.data.get("max_noise_ratio") is None:
            raise ValueError("noise_action: hold needs max_noise_ratio (the flat-tissue noise ratio over lanczos)")
        return value


class OutputConfig(_Strict):
    series_description_prefix: str = "SRx{scale} {model}: "
    encoding: Literal["classic", "enhanced"] = "classic"
    # JPEG-LS lossless: 2048² CT slices at about a third of their uncompressed size (as small as
    # JPEG 2000 lossless) for a fraction of JPEG 2000's encode time (BENCHMARKS.md, "Output
    # encoding"); a peer that does not accept it gets the instance decompressed (docs/pipeline.md).
    transfer_syntax: Literal["explicit_le", "jpeg2000_lossless", "jpegls_lossless", "rle"] = "jpegls_lossless"
    series_number_offset: int = 1000


class WorkerConfig(_Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    concurrency: int = Field(1, ge=1)
    # 0: whole slices, split into tiles only after an out-of-memory error. Measured on CPU
    # (512x512 CT, x4): whole slices were 2x faster than 256 px tiles and exact, while tiles with
    # a 16 px overlap left seams of up to 11 HU (4.5 HU with 32 px).
    tile_size: int = Field(0, ge=0)
    tile_overlap: int = Field(32, ge=0)
    batch_size: int = Field(4, ge=1)
    # Memory budget of one worker process, RSS in MiB: tile size and batch (at most tile_size and
    # batch_size) are planned before inference so that a job fits it, instead of learning the limit
    # from an out-of-memory error. None: half the machine's (or the cgroup's) memory, between 1 and
    # 4 GiB, decided where the worker runs (sr_engine/memory.py). Measured peak: within the budget
    # plus the model's own size (BENCHMARKS.md, "Memory").
    max_memory_mb: int | None = Field(None, ge=512)
    # auto: bf16 autocast on CUDA, fp32 on CPU. bf16 on a CPU with avx512_bf16/AMX is ~2x faster
    # and moves RealESRGAN's output by a few HU (BENCHMARKS.md, "SR engine"): a site's choice.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_retries: int = Field(5, ge=0)
    # The embedded worker inside `srnode serve` (no broker server needed).
    embedded: bool = True
    # A running job whose worker has not beaten for this long is requeued by the node.
    heartbeat_timeout_s: float = Field(60.0, gt=0)


class SendConfig(_Strict):
    max_attempts: int = Field(0, ge=0)  # 0 = retry until delivered
    backoff_initial_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    # Associations the outbox opens at once to one destination, each sending its own share of the
    # rows (row id modulo this). Default measured: BENCHMARKS.md, "Outbox".
    associations_per_destination: int = Field(2, ge=1, le=16)


class QueryRetrieveConfig(_Strict):
    # C-FIND answers at most this many matches, then fails with 0xA700 naming the limit (0 = no limit).
    max_results: int = Field(1000, ge=0)


Role = Literal["admin", "read", "reader", "store"]


class TokenEntry(_Strict):
    """A token's role and the person it belongs to (shown in the console, audit log, reader studies)."""

    role: Role
    name: str = Field("", max_length=64)


class AdminConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # token -> role ("admin", "read", "reader", "store"), or token -> {role, name}
    tokens: dict[str, Role | TokenEntry] = Field(default_factory=dict)

    def token_entries(self) -> dict[str, TokenEntry]:
        """Every token as {role, name}, whichever form the config used."""
        return {t: e if isinstance(e, TokenEntry) else TokenEntry(role=e) for t, e in self.tokens.items()}


class DicomwebConfig(_Strict):
    """The DICOMweb server under the admin app at /dicomweb (docs/dicomweb.md): tokens of admin.tokens,
    `read` for QIDO-RS/WADO-RS, `store` or `admin` for STOW-RS; QIDO-RS results are capped by
    query_retrieve.max_results like C-FIND."""

    enabled: bool = True
    # Origins a browser viewer may call from (e.g. an OHIF on another port); empty: same origin only.
    cors_origins: list[str] = Field(default_factory=list)
    # One STOW-RS request body at most (MiB); a larger one is refused with 413 before it is stored.
    max_stow_mb: float = Field(2048.0, gt=0)
    # The OHIF Viewer's built app (`make viewer` puts it here), served at /ohif when the folder exists;
    # a relative path is taken from the node's working directory.
    ohif_dir: str = "vendor/ohif"


class ModalityRetention(_Strict):
    max_age_h: float | None = Field(None, gt=0)


class RetentionConfig(_Strict):
    """Disk quota and age rules; recycling removes the oldest eligible series (docs/storage.md,
    "Retention and quota"). Off by default: quota_mb null and no age rule keeps everything."""

    # Originals + derived (sum of indexed file sizes), MiB; above it the oldest eligible series go.
    quota_mb: float | None = Field(None, gt=0)
    # A series whose jobs and deliveries are all finished becomes eligible this long after its last activity.
    keep_after_delivery_h: float = Field(72.0, ge=0)
    # A delivery that failed for good (send.max_attempts) counts as finished only when true.
    recycle_failed_deliveries: bool = False
    # Job rows of a recycled series are kept (history) unless false.
    keep_job_history: bool = True
    # Age rules: an eligible series older than this (hours since its last activity) goes even below
    # the quota. Per kind ("original", "derived"; null = no rule) and per modality (overrides the kind).
    max_age_h: dict[Literal["original", "derived"], float | None] = Field(default_factory=dict)
    modalities: dict[str, ModalityRetention] = Field(default_factory=dict)
    check_interval_s: float = Field(60.0, gt=0)

    @field_validator("modalities")
    @classmethod
    def _upper_modalities(cls, value: dict[str, ModalityRetention]) -> dict[str, ModalityRetention]:
        return {k.upper(): v for k, v in value.items()}


class HousekeepingConfig(_Strict):
    """What else grows and is trimmed by the node's housekeeping pass (docs/storage.md, "Housekeeping")."""

    enabled: bool = True
    # One pass at node start (without the temp-file walk: start already swept), then every interval_h.
    interval_h: float = Field(6.0, gt=0)
    # Delivered outbox rows go this long after delivery; pending and failed rows never do.
    outbox_delivered_days: float = Field(7.0, ge=0)
    # Finished job rows go this long after finishing, only once no series, derived series or outbox row
    # refers to them (while the series exists its job is what prevents deriving it twice).
    jobs_days: float = Field(30.0, ge=0)
    audit_days: float = Field(365.0, ge=0)
    # Worker rows (one per worker process start) not seen for this long.
    workers_days: float = Field(7.0, ge=0)
    # SQLite only: VACUUM when this share of the file is free pages (it holds the write lock meanwhile).
    vacuum_free_ratio: float = Field(0.25, gt=0, le=1)


def rule_name(index: int, rule: RoutingRule) -> str:
    """A stable name for a rule: its `name`, else its position (`rule-<index>`).

    The position fallback is kept so that jobs made before a rule was named still name their rule.
    """
    return rule.name or f"rule-{index}"


def duplicate_rule_name(rules: list[RoutingRule]) -> tuple[int, str] | None:
    """The first (index, name) whose name an earlier rule already has (names must tell rules apart)."""
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        name = rule_name(index, rule)
        if name.lower() in seen:
            return index, name
        seen.add(name.lower())
    return None


class SRNodeConfig(_Strict):
    node: NodeConfig = Field(default_factory=NodeConfig)
    peers: dict[str, AnyPeer] = Field(default_factory=dict)
    series: SeriesConfig = Field(default_factory=SeriesConfig)
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    routing: list[RoutingRule] = Field(default_factory=list)
    broker_url: str | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    send: SendConfig = Field(default_factory=SendConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    query_retrieve: QueryRetrieveConfig = Field(default_factory=QueryRetrieveConfig)
    dicomweb: DicomwebConfig = Field(default_factory=DicomwebConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    housekeeping: HousekeepingConfig = Field(default_factory=HousekeepingConfig)
    # Folders a checkpoint registered through the admin API must lie in. None: `models/` beside
    # the config file and the repository's `models/` (the loader fills them in).
    models_dirs: list[Path] | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> "SRNodeConfig":
        for i, rule in enumerate(self.routing):
            for dest in rule.destinations:
                if dest not in self.peers:
                    raise ValueError(f"routing.{i}.destinations: {dest!r} is not a key of peers")
        duplicate = duplicate_rule_name(self.routing)
        if duplicate is not None:
            raise ValueError(f"routing.{duplicate[0]}.name: {duplicate[1]!r} is already the name of an earlier rule")
        return self

    def peer_by_ae(self, ae_title: str) -> PeerConfig | None:
        """The peer whose AE title is `ae_title` (AE titles are what arrives on the wire)."""
        for peer in self.peers.values():
            if isinstance(peer, PeerConfig) and peer.ae_title == ae_title.strip():
                return peer
        return None
