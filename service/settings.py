"""Every knob of the scoring service, in one place, read from ``OODGATE_*`` environment variables.

pydantic-settings gives one typed, documented definition per knob: ``make serve``
with ``OODGATE_MAX_BATCH_SIZE=8`` does what it says, ``oodgate-serve --help``
and ``GET /v2`` show the same names, and a typo in a value fails at start-up
instead of in the middle of a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .drift import DEFAULT_WINDOW
from .drift_martingale import DEFAULT_DRIFT_DELTA
from .guarantees import DEFAULT_CONDITIONAL_DELTA

# the model a request that names none gets when OODGATE_DEFAULT_MODEL is unset and it is loaded
BUNDLED_DEFAULT_MODEL = "fashion-glow"


def selects(selectors: Iterable[str], name: str, version: str) -> bool:
    """Whether a settings list of models (``models``, ``conditional_models``: each ``name`` or
    ``name/version``) names this version of this model: the one reading of those lists."""
    return any(selector in (name, f"{name}/{version}") for selector in selectors)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OODGATE_", extra="ignore")

    # --- network -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to listen on; loopback unless you mean to expose it.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the service and of uvicorn."
    )

    # --- model repository --------------------------------------------------------------------
    models_root: Path = Field(Path("models"), description="Model repository: models/<name>/<version>/manifest.json.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bundles to load, as 'name' (every version) or 'name/version', comma-separated; empty loads all.",
    )
    default_model: str | None = Field(
        None,
        description=f"Model used when a request names none. Unset: {BUNDLED_DEFAULT_MODEL!r} when it is loaded (the "
        "bundled default, so its clients need not name it), else the only model loaded, else such requests get "
        "400 model_required with the list of models.",
    )
    verify_files: bool = Field(True, description="Check every model file's sha256 against its manifest on load.")

    # --- runtimes ------------------------------------------------------------------------------
    runtime: Literal["auto", "onnx", "torchscript"] = Field(
        "auto", description="Inference runtime; 'auto' times every available one at load and keeps the fastest."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when a GPU is there.")
    intra_op_threads: int = Field(0, ge=0, description="Threads one batch may use (ONNX Runtime / torch); 0 = cores.")
    warmup: bool = Field(True, description="Run every batch-size bucket once before reporting ready.")

    # --- batching ------------------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, description="Most images the model runs at once.")
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a queued image waits for a batch to fill once the worker is free, and only while "
        "more images are expected within it at the recent arrival rate. A lone request reaching an idle worker "
        "never waits: it runs at once.",
    )
    dynamic_batching: bool = Field(
        True, description="Merge images of concurrent requests into one batch; false runs each request on its own."
    )
    max_queue_images: int = Field(
        4096,
        ge=1,
        description="Bound of each model's queue, in images; past it requests get 503 at once. The default holds "
        "6-9 s of work for the bundled model on 2 cores (well inside request_timeout_s), so 64 clients of "
        "32 images each (2,048 in flight) queue instead of being refused.",
    )

    # --- requests ------------------------------------------------------------------------------
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of a request; past it the request gets 504 and its queued images are dropped."
    )
    max_images_per_request: int = Field(256, ge=1, description="More images than this in one request get 413.")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Larger request bodies get 413.")
    max_image_pixels: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Decompression-bomb guard: an encoded image declaring more pixels gets 413 before decoding.",
    )
    resize: bool = Field(
        False,
        description="Resize images whose size does not match the model (bilinear); false answers them with 422. "
        "Unless channel_mismatch says otherwise, also converts gray <-> RGB.",
    )
    channel_mismatch: Literal["convert", "refuse"] | None = Field(
        None,
        description="A gray image or tensor sent to an RGB model, or the reverse: 'convert' (gray repeated into R, G "
        "and B; RGB to ITU-R 601 luma, as Pillow's convert('L')), 'refuse' (422 wrong_channels naming the mode the "
        "model takes). Unset: convert when resize is on, else refuse.",
    )
    decode_threads: int = Field(2, ge=1, description="Threads that decode images and compute PNG complexity.")
    inline_prepare_pixels: int = Field(
        64 * 1024,
        ge=0,
        description="A pixel tensor (.npy or /v2) of at most this many values is checked on the event loop, not in "
        "the decode threads: so small a check holds the loop about as long as the trip to a thread and back would "
        "add to the request (benchmarks/inline_check_bench.py). 0: every tensor goes to the decode threads.",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 answers.")

    # --- shutdown ------------------------------------------------------------------------------
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM: longest wait for queued and in-flight requests before exiting."
    )

    # --- connection limits and timeouts (service/protocol.py, service/limits.py; issue 14) -----
    # Enforced by ``oodgate-serve``; under a bare ``uvicorn --factory`` only the body limits apply.
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Request line plus headers larger than this get 431 and the connection closes."
    )
    max_header_count: int = Field(100, ge=1, description="More header lines than this get 431.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a client may take to send a request's line and headers, from its connect or its first "
        "byte (slowloris guard); past it: 408 and the connection closes.",
    )
    body_idle_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the next chunk of a request body; past it: 408, connection closed."
    )
    body_min_rate_bytes_s: float = Field(
        1024.0,
        ge=0,
        description="Slowest average upload accepted once a body has been read for body_idle_timeout_s "
        "(1-byte-per-second clients are cut there); 0 turns the rate check off.",
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this.")
    max_connections: int = Field(
        1000, ge=1, description="Open connections or running requests past which new requests get 503 (uvicorn)."
    )
    max_buffered_body_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Request-body bytes all requests together may hold in memory; a body that would pass it gets "
        "503 + Retry-After before it is read.",
    )
    shutdown_grace_s: float = Field(
        5.0,
        gt=0,
        description="After the drain: longest wait for the last answers to be written before connections are cut. "
        "Exit comes at most drain_timeout_s + shutdown_grace_s after SIGTERM, whatever the clients do.",
    )
    max_upstream_response_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Sidecar mode: an upstream answer larger than this is not relayed; the client gets 502.",
    )

    # --- live model management (service/repository.py; issue 14) --------------------------------
    poll_models_s: float = Field(
        0.0,
        ge=0,
        description="Every this many seconds, look under models_root for new, removed or changed versions: a new "
        "one is loaded and warmed beside the old, then switched to; 0 turns polling off (the /v2/repository "
        "API still works).",
    )

    # --- drift monitoring (service/drift.py) ---------------------------------------------------
    drift_window: int = Field(
        DEFAULT_WINDOW,
        ge=1,
        description="Images in each model's drift window (OOD rate, mean p-value, typicality test).",
    )

    # --- guarantees (service/guarantees.py) ----------------------------------------------------
    conditional_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models ('name' or 'name/version', comma-separated) whose flags are calibration-conditional "
        "by default: false-positive rate <= alpha with probability >= 1 - conditional_delta over the calibration "
        "set. A request overrides it with conditional=true/false.",
    )
    conditional_delta: float = Field(
        DEFAULT_CONDITIONAL_DELTA,
        gt=0,
        lt=1,
        description="Probability that a calibration-conditional flag's false-positive rate exceeds alpha "
        "(over the draw of the calibration set); a request may send its own delta.",
    )
    drift_delta: float = Field(
        DEFAULT_DRIFT_DELTA,
        gt=0,
        lt=1,
        description="False-alarm probability of the drift alarm over an unbounded in-distribution stream: it "
        "latches when the conformal test martingale's wealth reaches 1/drift_delta.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the admin endpoints (POST /admin/drift/reset); unset, they answer 403.",
    )

    # --- sidecar mode (service/sidecar.py) -------------------------------------------------------
    upstream: str | None = Field(
        None,
        description="URL of the service to guard (e.g. http://127.0.0.1:9000). Set, oodgate also becomes a "
        "reverse proxy: requests to the proxied paths are scored, then blocked, annotated or forwarded.",
    )
    sidecar_policy: Literal["block", "annotate", "shadow"] = Field(
        "block",
        description="block: OOD requests get 422 and never reach the upstream; annotate: forward with X-OOD and "
        "X-OOD-P-Value headers on request and response; shadow: forward always, only count.",
    )
    sidecar_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Proxied paths as glob patterns (e.g. /predict,/v1/*), comma-separated; empty: every path "
        "except oodgate's own endpoints.",
    )
    sidecar_passthrough_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Proxied paths (glob patterns, comma-separated) where block mode forwards a request in which "
        "no image is found (e.g. /health,/labels); everywhere else such a request gets 422 no_image. Images found "
        "on these paths are still scored.",
    )
    sidecar_json_path: str = Field(
        "image",
        description="Where a JSON body holds base64 images: dotted keys, '*' for every item of a list "
        "(e.g. instances.*.b64).",
    )
    sidecar_max_multipart_parts: int = Field(
        1000,
        ge=1,
        description="Sidecar mode: most parts one multipart body (or one nested in it) may have for the image search; "
        "more is 400 bad_multipart in block mode.",
    )
    sidecar_inline_search_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="Sidecar mode: bodies of at most this many bytes are searched for images on the event loop, "
        "larger ones in the decode threads. The default favours latency: benchmarks/inline_check_bench.py shows a "
        "37 KB multipart body holding the loop about 0.8 ms on 2 cores where the trip to a thread adds about 0.1 ms; "
        "lower it when many proxied requests share the loop. 0: every body goes to the threads.",
    )
    sidecar_fdr: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Decide the sidecar's flags by Benjamini-Hochberg at this false-discovery rate over each "
        "request's images (policy block: blocked when any image is a discovery); unset: per-image alpha.",
    )
    sidecar_model: str | None = Field(
        None,
        description="Model (name or name/version) that scores the sidecar's requests. Unset: default_model if set, "
        "else the only model loaded; with several models and neither set, oodgate-serve refuses to start.",
    )
    upstream_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the upstream's answer (then 504).")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="Longest wait to connect to the upstream.")
    upstream_max_connections: int = Field(100, ge=1, description="Size of the pooled upstream connection pool.")

    # --- authentication (service/api/auth.py) ------------------------------------------------------
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Bearer tokens accepted on every endpoint but the health probes (and /metrics unless "
        "metrics_auth), comma-separated; with api_tokens_file, both are accepted. Neither set: no authentication.",
    )
    api_tokens_file: Path | None = Field(
        None,
        description="File of accepted bearer tokens, one per line ('#' comments), re-read when it changes (e.g. a "
        "mounted Kubernetes Secret); empty or unreadable, only api_tokens are accepted.",
    )
    metrics_auth: bool = Field(
        False, description="Also require a bearer token on /metrics (then give Prometheus one of the tokens)."
    )

    @model_validator(mode="before")
    @classmethod
    def _split_models(cls, data):
        if isinstance(data, dict) and isinstance(data.get("models"), str):
            data = {**data, "models": [m.strip() for m in data["models"].split(",") if m.strip()]}
        return data

    @field_validator("sidecar_paths", "conditional_models", "sidecar_passthrough_paths", "api_tokens", mode="before")
    @classmethod
    def _split_paths(cls, value):
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"upstream must be an http:// or https:// URL, got {value!r}")
        return value

    @property
    def convert_channels(self) -> bool:
        """Whether a gray <-> RGB mismatch is converted (True) or refused with 422 (False)."""
        if self.channel_mismatch is None:
            return self.resize
        return self.channel_mismatch == "convert"

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_images_per_request > self.max_queue_images:
            raise ValueError("max_images_per_request must not exceed max_queue_images (such a request could never run)")
        return self

    @model_validator(mode="after")
    def _check_body_budget(self) -> Settings:
        if self.max_request_bytes > self.max_buffered_body_bytes:
            raise ValueError(
                "max_request_bytes must not exceed max_buffered_body_bytes (such a body could never be read)"
            )
        return self
