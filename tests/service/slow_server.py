"""A real ``oodgate-serve`` process whose runtime sleeps per batch, for the SIGTERM test.

``python -m tests.service.slow_server MODELS_ROOT PORT SECONDS [SETTINGS_JSON]`` serves through
:func:`service.cli.serve` (the CLI's own code path) in the main thread, so the
signal is delivered exactly as in production.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from service.app import create_app
from service.cli import serve
from service.repository import default_runtime_factory
from service.settings import Settings


class SlowRuntime:
    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.backend, self.device = inner.backend, inner.device

    def run(self, images):
        time.sleep(self.seconds)
        return self.inner.run(images)


def main() -> None:
    root, port, seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    base = {"runtime": "onnx", "max_batch_size": 2, "warmup": False, "drain_timeout_s": 30, "log_level": "warning"}
    settings = Settings(models_root=root, port=port, **{**base, **overrides})

    def factory(manifest, bundle_dir, s):
        return SlowRuntime(default_runtime_factory(manifest, bundle_dir, s), seconds)

    serve(create_app(settings, runtime_factory=factory), settings)


if __name__ == "__main__":
    main()
