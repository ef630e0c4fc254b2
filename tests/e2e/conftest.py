import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Envoy, Upstream  # noqa: E402


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
