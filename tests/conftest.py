"""Shared fixtures: one small demo world per test session, built with the real builder."""

from __future__ import annotations

import os
import tempfile

# Offline and quiet before any HF/Prefect import; caches stay out of the user's home.
_CACHE = tempfile.mkdtemp(prefix="saev-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE, "hf-datasets"))
os.environ.setdefault("PREFECT_HOME", os.path.join(_CACHE, "prefect"))
os.environ.setdefault("TQDM_DISABLE", "1")
# A flow run in a subprocess starts its own ephemeral Prefect server; Prefect gives it 20 s, which a
# loaded 2-core machine can miss ("Timed out while attempting to connect to ephemeral Prefect API server").
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")

import pytest  # noqa: E402


def under_ci() -> bool:
    """`.ci/run` sets CI (as most CI services do): there, a machine that cannot run a test is a failure."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str):
    """Skip a test whose system dependency (Chromium, PostgreSQL) is missing here; under CI, fail it
    instead, so a CI run cannot pass quietly without the browser test or the PostgreSQL soak."""
    if under_ci():
        pytest.fail(f"{reason} (CI is set: this test must run)", pytrace=False)
    pytest.skip(reason)

from saev_core.demo.build import DemoConfig, build_world  # noqa: E402

# Small but trained long enough that the model reads the image (accuracy well above chance).
TEST_WORLD = DemoConfig(seed=0, n_samples=120, n_heldout=120, n_pretrain=2000, pretrain_steps=300)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "demo"
    build_world(TEST_WORLD, out, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def world(world_dir):
    import json

    return json.loads((world_dir / "world.json").read_text())


@pytest.fixture(scope="session")
def bundle(world_dir):
    from saev_core.activations.modeling import load_model

    return load_model(str(world_dir / "model"), device="cpu")


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (SQLite) for the session, shut down cleanly at the end."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
