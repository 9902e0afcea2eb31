"""Fixtures for the Envoy end-to-end tests: plugin builds (once per session),
simulated replicas, and Envoy processes that are stopped at teardown and whose
log tails are attached to a failing test's report."""

import os
import sys

import pytest

# The repository root: envoy_harness, bench and sim are packages there.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import envoy_harness as harness  # noqa: E402

_started = []  # every Envoy a fixture started, for failure reports


@pytest.fixture(scope="session")
def envoy_binary():
    return harness.find_envoy()


@pytest.fixture(scope="session")
def production_wasm():
    """dist-equivalent ai-load-balancer-envoy.wasm, built from the working tree."""
    return harness.build_plugin()


@pytest.fixture(scope="session")
def faulty_wasm():
    """tests/plugins/faulty_plugin.py built for stock Envoy."""
    return harness.build_test_plugin("faulty_plugin")


@pytest.fixture(scope="module")
def replicas():
    with harness.ReplicaSet.start(3) as replica_set:
        yield replica_set


class EnvoyStarter:
    """Starts Envoys in a pytest temp dir and stops them all at teardown."""

    def __init__(self, tmp_dir, binary):
        self.tmp_dir = tmp_dir
        self.binary = binary
        self.envoys = []

    def __call__(self, config, wait=True, timeout=60):
        workdir = os.path.join(self.tmp_dir, f"envoy{len(self.envoys)}")
        envoy = harness.Envoy(config, workdir, self.binary)
        self.envoys.append(envoy)
        _started.append(envoy)
        return envoy.start(wait=wait, timeout=timeout)

    def stop_all(self):
        for envoy in self.envoys:
            envoy.stop()
            if envoy in _started:
                _started.remove(envoy)


@pytest.fixture(scope="module")
def module_envoys(tmp_path_factory, envoy_binary):
    """Envoys shared by a module's tests."""
    starter = EnvoyStarter(str(tmp_path_factory.mktemp("envoy")), envoy_binary)
    yield starter
    starter.stop_all()


@pytest.fixture
def start_envoy(tmp_path, envoy_binary):
    """Envoys for one test."""
    starter = EnvoyStarter(str(tmp_path), envoy_binary)
    yield starter
    starter.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for envoy in list(_started):
            report.sections.append((f"envoy log {envoy.log_path}", envoy.log_tail(60)))
