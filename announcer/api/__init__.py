"""The HTTP API under /v1 (thin: parse and validate, call the modules below, answer JSON)."""
