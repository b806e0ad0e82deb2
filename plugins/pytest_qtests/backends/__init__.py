"""Engines behind one interface: ``generate(requests) -> records``."""
