"""Live model management (service/repository.py, its live half, and its V2 API, service/api/repository.py).

A real loopback server and the real ``tritonclient.http``: new versions appear, are
loaded beside the old and switched to; corrupt ones are refused while the old
serves on; queued requests finish on a retired version; polling follows the disk.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.app import create_app

from .serving import LiveServer, controlled_app, npy, random_images, settings

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

NPY = {"content-type": "application/x-npy"}


def add_version(root: Path, version: str, source: str = "1") -> Path:
    """A copy of tiny/<source> published as tiny/<version> (its manifest says so); written, then renamed in."""
    staging = root / f".staging-{version}"
    shutil.copytree(root / "tiny" / source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    target = root / "tiny" / version
    staging.rename(target)
    return target


def corrupt(bundle: Path) -> None:
    graph = bundle / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # truncated: no longer a graph


@pytest.fixture
def root(tmp_path, tiny_models_root) -> Path:
    shutil.copytree(tiny_models_root / "tiny" / "1", tmp_path / "tiny" / "1")
    return tmp_path


def score_version(url: str, **params) -> tuple[int, str | None]:
    response = httpx.post(f"{url}/score", content=npy(random_images(1)[:, 0]), headers=NPY, params=params)
    return response.status_code, response.json().get("version")


def wait_until(predicate, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition never held"
        time.sleep(0.05)


def test_tritonclient_lists_loads_and_unloads_models(root):
    with LiveServer(create_app(settings(root))) as server:
        client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
        assert "model_repository" in client.get_server_metadata()["extensions"]
        index = client.get_model_repository_index()
        assert [(m["name"], m["version"], m["state"]) for m in index] == [("tiny", "1", "READY")]

        add_version(root, "2")
        assert [(m["version"], m["state"]) for m in client.get_model_repository_index()] == [
            ("1", "READY"),
            ("2", "UNAVAILABLE"),
        ]  # on disk, not served until loaded
        client.load_model("tiny")
        assert [m["state"] for m in client.get_model_repository_index()] == ["READY", "READY"]
        assert score_version(server.url) == (200, "2")  # "latest" moved to the new version
        assert score_version(server.url, version="1") == (200, "1")  # the old one still answers when named

        corrupt(add_version(root, "3"))
        with pytest.raises(InferenceServerException, match="tiny/3.*sha256"):
            client.load_model("tiny")
        assert score_version(server.url) == (200, "2")  # the corrupt version was refused; 2 serves on
        states = {m["version"]: (m["state"], m["reason"]) for m in client.get_model_repository_index()}
        assert states["3"][0] == "UNAVAILABLE" and "sha256" in states["3"][1]

        client.unload_model("tiny")
        assert score_version(server.url, model="tiny")[0] == 404
        assert {m["reason"] for m in client.get_model_repository_index()} == {"unloaded"}
        with pytest.raises(InferenceServerException, match="unknown_model"):
            client.unload_model("nonesuch")
        shutil.rmtree(root / "tiny" / "3")
        client.load_model("tiny")
        assert score_version(server.url) == (200, "2")
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'oodgate_model_loads_total{model="tiny",outcome="refused",version="3"} 1.0' in metrics
        assert 'oodgate_model_loads_total{model="tiny",outcome="unloaded",version="2"} 1.0' in metrics


def test_polling_follows_the_disk_and_queued_requests_finish_on_the_retired_version(root):
    app, runtimes = controlled_app(root, poll_models_s=0.1)
    with LiveServer(app) as server:
        old = runtimes[0]
        old.gate.clear()
        old.entered.clear()  # set by the warm-up already
        answers: list[tuple[int, str | None]] = []
        queued = threading.Thread(target=lambda: answers.append(score_version(server.url)))
        queued.start()
        assert old.entered.wait(10)  # a request is in tiny/1's worker, held there
        add_version(root, "2")
        wait_until(lambda: httpx.get(f"{server.url}/v2/models/tiny").json()["versions"] == ["1", "2"])
        assert score_version(server.url) == (200, "2")  # loaded, warmed, switched to, while tiny/1 is busy
        shutil.rmtree(root / "tiny" / "1")  # tiny/1 leaves the table...
        wait_until(lambda: httpx.get(f"{server.url}/v2/models/tiny").json()["versions"] == ["2"])
        assert score_version(server.url, version="1")[0] == 404
        old.gate.set()  # ...but what it had queued finishes on it
        queued.join(30)
        assert answers == [(200, "1")]

        corrupt(root / "tiny" / "2")  # the files under a serving version change on disk
        wait_until(lambda: "tiny/2" in httpx.get(f"{server.url}/models").json()["errors"])
        errors = httpx.get(f"{server.url}/models").json()["errors"]
        assert "sha256" in errors["tiny/2"] and "keeps serving" in errors["tiny/2"]
        assert score_version(server.url) == (200, "2")  # the copy verified at load serves on


def test_a_runtime_fallback_is_a_warning_shown_in_models(root, caplog):
    corrupt(root / "tiny" / "1")
    app = create_app(settings(root, runtime="auto", verify_files=False))
    with caplog.at_level("WARNING", logger="service.runtimes"), LiveServer(app) as server:
        (model,) = httpx.get(f"{server.url}/models").json()["models"]
    assert model["backend"] == "torchscript"
    assert model["runtime_warnings"] and "onnx" in model["runtime_warnings"][0]
    assert any("fell back" in r.getMessage() for r in caplog.records)
