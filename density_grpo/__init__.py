"""density-grpo: density-aware prompt sampling for GRPO, as a reproducible pipeline."""

__version__ = "0.1.0"
