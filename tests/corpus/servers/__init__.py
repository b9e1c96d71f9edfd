"""The corpus's own servers: one defect each, on the shared engine server (tests/corpus/engine.py)."""
