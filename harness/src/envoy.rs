//! Runs a real Envoy for end-to-end tests.
