"""Tests: unit tests, plugin tests run natively and in wasm (the test host in
tests/host), and the test plugins in tests/plugins."""
