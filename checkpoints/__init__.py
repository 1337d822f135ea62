"""Checkpoint converters and tools."""

import locca  # noqa: F401  (first: quiets probe noise before TensorFlow loads)
