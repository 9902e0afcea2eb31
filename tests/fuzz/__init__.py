"""Property-based fuzzing (hypothesis) of every parser of untrusted input, and
a saved corpus replayed through the plugin natively and in wasm."""
