"""One `Settings` object, read from `RRMM_*` environment variables.

The embedded mode (what `rrmm run` starts) works with no configuration at all; the
production mode refuses to start without a real secret key.
"""

from __future__ import annotations

import json
import secrets
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values that people paste from examples; a deployment that uses one has no secret at all.
_PLACEHOLDER_SECRETS = {
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "secret-key",
    "secretkey",
    "your-secret-key",
    "please-change-me",
    "replace-me",
    "dev",
    "development",
    "test",
    "password",
}
MIN_SECRET_KEY_LENGTH = 32
SmtpStartTls = Literal["off", "opportunistic", "required"]
# Spellings of RRMM_SMTP_STARTTLS kept from when it was a boolean.
_STARTTLS_BOOLEANS = {
    "true": "required",
    "1": "required",
    "yes": "required",
    "on": "required",
    "false": "off",
    "0": "off",
    "no": "off",
    "": "off",
}


def default_var_dir() -> Path:
    """Where the embedded mode keeps its files (database, broker socket, caught mail)."""
    return Path("var").resolve()


def default_database_url(var_dir: Path) -> str:
    return f"sqlite:///{var_dir / 'rrmm.db'}"


def is_placeholder_secret(value: str) -> bool:
    lowered = value.strip().lower()
    return (
        len(lowered) < MIN_SECRET_KEY_LENGTH
        or lowered in _PLACEHOLDER_SECRETS
        or lowered.startswith(("change", "replace", "your-", "<"))
        or len(set(lowered)) < 8
    )


class Settings(BaseSettings):
    """Every tunable of the service. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="RRMM_", extra="ignore")

    # Unset: embedded when the database is the default SQLite file, production otherwise,
    # so a deployment pointed at PostgreSQL can never run without a real secret key.
    mode: Literal["embedded", "production"] | None = None
    var_dir: Path = Field(default_factory=default_var_dir)
    database_url: str = ""
    broker_url: str = ""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    mail_from: str = "RRMM <alerts@rrmm.invalid>"
    public_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr | None = None
    webhook_allow_private: bool = False
    max_body_bytes: int = 1_048_576
    max_import_bytes: int = 20_971_520
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    heartbeat_interval_seconds: float = Field(default=15.0, gt=0)
    # `/readyz` answers 503 when no worker heartbeat is fresh (off: the API runs alone too).
    ready_requires_worker: bool = False

    # Outgoing mail security and the operators' notices (see README, "Mail relay security").
    # STARTTLS: `off` never upgrades (even when offered), `opportunistic` upgrades with a
    # verified certificate when offered, `required` refuses a relay that does not offer it
    # or whose certificate does not verify. The old booleans still read: true → required,
    # false → off.
    smtp_starttls: SmtpStartTls = "off"
    # A PEM file of the CA(s) that sign a private relay's certificate (the system's
    # trust store when unset).
    smtp_ca_file: Path | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # AUTH over an unencrypted connection is refused unless the relay is on loopback or
    # this says so (the password would cross the network in clear).
    smtp_allow_plaintext_auth: bool = False
    # The operators' notice outbox: attempts before it is given up, and the first retry
    # delay (doubled each time, up to an hour).
    operator_notice_max_attempts: int = Field(default=8, ge=1, le=100)
    operator_notice_retry_seconds: float = Field(default=30.0, gt=0)
    # Bearer token that `/metrics` requires when set (set it in production).
    metrics_token: SecretStr | None = None

    # Fan-out (see README, "Tuning the fan-out").
    smtp_connections: int = Field(default=10, ge=1, le=200)
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(default=200, ge=1, le=5000)
    webhook_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    delivery_batch_size: int = Field(default=250, ge=1, le=5000)
    # Members whose targets and ledger rows one transaction writes: the declaration (or
    # update) request writes the first chunk and answers; the worker writes the rest.
    targeting_chunk_members: int = Field(default=1000, ge=1, le=100_000)
    # A targeting job nobody moved for this long is resumed by the sweeper.
    targeting_stalled_seconds: float = Field(default=15.0, gt=0)
    # A claim's lease; a live batch renews it every third of it, so the rows of a worker
    # that died are taken over within one lease (plus a sweep).
    delivery_lease_seconds: float = Field(default=15.0, ge=1)
    # How long one batch may take before what did not finish is handed back for a retry.
    delivery_batch_deadline_seconds: float = Field(default=100.0, gt=0)
    # Outcomes are written as sends finish: every so many seconds, or rows, whichever first.
    outcome_flush_seconds: float = Field(default=0.1, gt=0, le=10)
    outcome_flush_rows: int = Field(default=50, ge=1, le=5000)
    # The worker's event loop (the sends' I/O): asyncio's own; `uvloop` (installed with
    # uvicorn[standard], pinned in the lock), or `auto`: uvloop when it is installed. Not
    # the default: on the shared 2-core machine it did not measurably lower the worker's
    # CPU per delivery (bench/README.md, `--event-loop`).
    worker_event_loop: Literal["asyncio", "uvloop", "auto"] = "asyncio"
    delivery_max_attempts: int = Field(default=8, ge=1, le=100)
    delivery_max_age_seconds: float = Field(default=86400.0, gt=0)
    retry_base_seconds: float = Field(default=10.0, gt=0)
    retry_max_seconds: float = Field(default=1800.0, gt=0)
    retry_after_cap_seconds: float = Field(default=3600.0, gt=0)
    sweep_interval_seconds: float = Field(default=2.0, gt=0)
    # Requests inside one API process at once (the rest wait, without a thread or a
    # database connection): keep it at or below the database pool (5 + 10 overflow).
    api_concurrency: int = Field(default=12, ge=1, le=1000)
    api_queue_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    # How long each API process serves an incident's status from memory (0: never).
    status_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # The events stream: how often each API process reads an incident with listeners
    # (so at most this many status events per second), and the keep-alive comment period.
    events_poll_seconds: float = Field(default=1.0, ge=0.1, le=60)
    events_ping_seconds: float = Field(default=15.0, ge=1, le=300)
    requeue_after_seconds: float = Field(default=30.0, gt=0)
    ack_token_ttl_days: int = Field(default=30, ge=1)
    ack_token_key_id: int = Field(default=1, ge=1, le=255)
    ack_token_accepted_key_ids: list[int] = Field(default_factory=list)
    ack_rate_limit: str = "60/minute"
    rate_limit_storage: str = "memory://"
    operator_emails: list[str] = Field(default_factory=list)

    # The two-person rule (issue 12): declarations of these severities (comma-separated)
    # wait for a second principal's approval; exercises too only if the flag is set. A
    # pending declaration that nobody approves within the TTL expires.
    approval_severities: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["severe", "extreme"]
    )
    approval_for_exercises: bool = False
    approval_ttl_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)

    # Key rotation (see README, "Rotating RRMM_SECRET_KEY"): the key being replaced, still
    # accepted to decrypt webhook secrets and to verify ack links, never used to write.
    secret_key_previous: SecretStr | None = None

    # The edges (issue 9): slow clients, reverse proxies, rate limits, event streams.
    # A request's whole body must arrive within this many seconds (else 408), before the
    # request may take an admission slot.
    body_read_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Peers whose X-Forwarded-For / Forwarded headers are believed (CIDRs, comma-separated);
    # none by default: the client address is the socket's peer.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    # Each valid ack token (one member's link) may be used this often; invalid tokens
    # count against the client address instead (RRMM_ACK_RATE_LIMIT).
    ack_link_rate_limit: str = "30/minute"
    # Each API process re-checks the keys of its open streams this often (one query for all),
    # so a revoked key loses its streams within 15 s.
    events_key_recheck_seconds: float = Field(default=10.0, gt=0, le=15)
    events_max_streams_per_key: int = Field(default=10, ge=1, le=10_000)
    # Each API process trusts a verified API key this long without reading it again (0:
    # every request reads it), so a key revoked elsewhere (`rrmm keys revoke`) is refused by
    # every process within this bound. Kept short: it is the revocation delay.
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=15)
    # The console's sessions end after this long without a request, and this long after
    # sign-in whatever the activity.
    console_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    console_session_hours: int = Field(default=12, ge=1, le=7 * 24)
    # Failed console sign-ins per client address (any account) before it is refused.
    console_sign_in_rate_limit: str = "20/15 minutes"

    @field_validator("approval_severities", mode="before")
    @classmethod
    def _parse_severities(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            parts = json.loads(text) if text.startswith("[") else text.split(",")
            value = [str(part).strip() for part in parts if str(part).strip()]
        known = {"minor", "moderate", "severe", "extreme"}
        if isinstance(value, list) and not set(value) <= known:
            raise ValueError(f"severities are {', '.join(sorted(known))}")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            # `10.0.0.0/8, 192.168.0.0/16`, or a JSON list like the other list settings.
            text = value.strip()
            parts = json.loads(text) if text.startswith("[") else text.split(",")
            value = [str(part).strip() for part in parts if str(part).strip()]
        if isinstance(value, list):
            # strict=False: 10.0.0.1/8 means the network it is in, as a proxy list would.
            return [ip_network(str(part).strip(), strict=False) for part in value]
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # `RRMM_METRICS_TOKEN=` (as compose passes an unset variable) means no token, not
        # a token that an empty `Bearer` would match.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("smtp_starttls", mode="before")
    @classmethod
    def _starttls_from_boolean(cls, value: object) -> object:
        if isinstance(value, bool):
            return "required" if value else "off"
        if isinstance(value, str):
            lowered = value.strip().lower()
            return _STARTTLS_BOOLEANS.get(lowered, lowered)
        return value

    @model_validator(mode="after")
    def _fill_defaults_and_check_secret(self) -> Settings:
        if self.mode is None:
            self.mode = "embedded" if not self.database_url else "production"
        if not self.database_url:
            self.database_url = default_database_url(self.var_dir)
        if not self.broker_url:
            self.broker_url = f"redis+socket://{self.var_dir / 'redis.sock'}"
        if self.secret_key is None:
            if self.mode == "production":
                raise ValueError(
                    "RRMM_SECRET_KEY is required outside the embedded mode "
                    f"(at least {MIN_SECRET_KEY_LENGTH} random characters)"
                )
            self.secret_key = SecretStr(_embedded_secret_key(self.var_dir))
        elif is_placeholder_secret(self.secret_key.get_secret_value()):
            raise ValueError(
                "RRMM_SECRET_KEY looks like a placeholder: use at least "
                f"{MIN_SECRET_KEY_LENGTH} random characters (e.g. `openssl rand -hex 32`)"
            )
        previous = self.secret_key_previous
        if previous is not None and not previous.get_secret_value().strip():
            # `RRMM_SECRET_KEY_PREVIOUS=` is how many deployment tools unset a variable.
            self.secret_key_previous = previous = None
        if previous is not None and is_placeholder_secret(previous.get_secret_value()):
            raise ValueError(
                "RRMM_SECRET_KEY_PREVIOUS looks like a placeholder: it must be the key that "
                "RRMM_SECRET_KEY replaces (unset it once `rrmm secrets rotate` has run)"
            )
        return self

    @property
    def secret(self) -> str:
        assert self.secret_key is not None  # filled by the validator
        return self.secret_key.get_secret_value()

    @property
    def previous_secret(self) -> str | None:
        """RRMM_SECRET_KEY_PREVIOUS while a rotation is under way, else None."""
        if self.secret_key_previous is None:
            return None
        return self.secret_key_previous.get_secret_value()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _embedded_secret_key(var_dir: Path) -> str:
    """A per-installation key kept in `var/`, so webhook secrets survive a restart."""
    path = var_dir / "secret_key"
    if path.exists():
        key = path.read_text().strip()
        if is_placeholder_secret(key):
            raise ValueError(
                f"{path} does not hold a usable secret key; delete it to get a new one"
            )
        return key
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(key)
    return key


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
