"""qtests: a pytest plugin that gates quantized LLM checkpoints against their BF16 reference."""

__version__ = "0.1.0"
