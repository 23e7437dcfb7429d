"""Settings of the evaluation endpoint (the ``args`` of the Serve application)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr

from services.rollout.config import EngineConfig
from sftrl.config import ConfigError, StrictModel
from sftrl.home import secret_file, sftrl_home


class ServeSettings(StrictModel):
    redis_url: str | None = Field(None, description="default: $REDIS_URL")
    token: SecretStr | None = Field(None, description="default: $SFTRL_API_TOKEN, else token_file")
    token_file: str | None = Field(None, description="a file holding the bearer token")
    data_dir: str | None = Field(
        None, description="datasets clients may name in file options (file names in this folder, never paths)"
    )
    checkpoint_roots: list[str] | None = Field(
        None, description="folders checkpoints may be loaded from (default: $SFTRL_CHECKPOINT_ROOTS, else "
        "$SFTRL_HOME and the server's working folder)"
    )  # fmt: skip
    max_episodes: int = Field(1024, ge=1, description="most episodes one evaluation may ask for")
    max_concurrent_evals_per_token: int = Field(2, ge=1)
    max_body_bytes: int = Field(65_536, ge=1024)
    max_chat_tokens: int = Field(1024, ge=1)
    max_concurrent_chats_per_token: int = Field(
        4, ge=1, description="chat completions one token may have in flight at once (429 beyond)"
    )
    warm_models: int = Field(2, ge=1, description="engines an evaluation replica keeps loaded (LRU)")
    lease_s: float = Field(60.0, ge=1, description="an evaluation nobody renews for this long is marked lost")
    eval_timeout_s: float = Field(6 * 3600, gt=0, description="longest an evaluation may run")
    chat_timeout_s: float = Field(300, gt=0, description="longest a chat completion may take")
    eval_ttl_days: float = Field(30, gt=0, description="finished evaluations are kept this long")
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(None, ge=1, description="CPU threads of a replica's engine")
    kv_cache_gib: float | None = Field(None, gt=0, description="default: engine.kv_cache_gib")
    # The replicas' engine settings are the server's alone: a run's record (its resolved config, in
    # Redis) is written by whoever can write the registry, who must not choose the folders vLLM writes
    # its caches to, whether it compiles code, or the context and precision it runs with.
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="the replicas' vLLM settings (dtype, max_model_len, enforce_eager, cache_dir...); "
        "model is ignored (each engine opens its checkpoint); never taken from a run's record",
    )

    def replica_engine(self) -> EngineConfig:
        """A replica's engine settings: ``engine`` with ``device``, ``threads`` and ``kv_cache_gib``
        applied (validated again, so an override is checked like the rest; the model is set per
        checkpoint)."""
        overrides: dict[str, Any] = {"device": self.device}
        if self.threads:
            overrides["threads"] = self.threads
        if self.kv_cache_gib:
            overrides["kv_cache_gib"] = self.kv_cache_gib
        return EngineConfig.model_validate({**self.engine.model_dump(), **overrides})

    def resolved_token(self) -> str:
        """The bearer token: ``token``, ``$SFTRL_API_TOKEN`` or ``token_file``; ConfigError without one."""
        # stripped everywhere: a Secret made from a file ending in a newline must not lock everyone out
        if self.token is not None and self.token.get_secret_value().strip():
            return self.token.get_secret_value().strip()
        env = os.environ.get("SFTRL_API_TOKEN", "").strip()
        if env:
            return env
        if self.token_file:
            try:
                value = Path(self.token_file).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the API token file {self.token_file}: {exc}") from None
            if value:
                return value
            raise ConfigError(f"the API token file {self.token_file} is empty")
        raise ConfigError("no API token: set SFTRL_API_TOKEN, or pass a token file")

    def resolved_checkpoint_roots(self) -> list[Path]:
        from sftrl.checkpoint import checkpoint_roots

        return checkpoint_roots(self.checkpoint_roots)

    def resolved_data_dir(self) -> Path | None:
        return Path(self.data_dir).resolve() if self.data_dir else None

    def resolved_redis_url(self) -> str:
        url = self.redis_url or os.environ.get("REDIS_URL")
        if not url:
            raise ConfigError("no registry: set REDIS_URL (sftrl serve starts a local Redis itself)")
        return url


# The ingress replica's body limit and token. Serve runs copies of the FastAPI app and of the deployment
# class in each replica, so they live in this module (imported, never copied) and are set by the replica.
_GUARD: dict[str, Any] = {"bytes": ServeSettings.model_fields["max_body_bytes"].default, "token": b""}


def set_guard(limit: int, token: bytes) -> None:
    _GUARD["bytes"], _GUARD["token"] = limit, token


def body_limit() -> int:
    return int(_GUARD["bytes"])


def guard_token() -> bytes:
    return bytes(_GUARD["token"])


def local_token_file() -> Path:
    """``$SFTRL_HOME/api-token``, created with a random token (mode 0600) on first use."""
    path = sftrl_home() / "api-token"
    secret_file(path)
    return path
