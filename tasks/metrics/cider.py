"""``tasks.metrics.cider.cider``: the CIDEr seqio metric (alias of tasks/metrics/captions.py)."""

from tasks.metrics.captions import JavaNotFoundError, caption_scores, cider

__all__ = ["cider", "caption_scores", "JavaNotFoundError"]
