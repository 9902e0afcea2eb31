"""Paths and names every part of the harness shares."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY_TEST = os.path.join(ROOT, "envoy-test")      # the end-to-end tests and their results
LOOPBACK = "127.0.0.1"
TMP_DIR = os.path.join(ENVOY_TEST, "results", "tmp")  # git-ignored

OVERRIDE_HEADER = "x-gateway-destination-endpoint"
PRODUCTION_ENTRY = "ai_load_balancer.main"
PRODUCTION_NAME = "ai-load-balancer"
TEST_PLUGINS_DIR = os.path.join(ROOT, "tests", "plugins")
