import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402
from harness import Envoy, Upstream  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        for d in harness.CREATED_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    elif harness.CREATED_DIRS:
        print(f"\nkept the test work directories (Envoy logs, configs): {tempfile.gettempdir()}/keygate-*")


@pytest.fixture(scope="session")
def upstream():
    u = Upstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def make_envoy(upstream):
    started = []

    def make(plugin_config, **kw):
        e = Envoy(plugin_config, upstream.port, **kw)
        started.append(e)
        return e.start()

    yield make
    for e in started:
        e.stop()
