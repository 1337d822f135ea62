"""The text formats of LocCa's location tasks: the one place that writes and parses them.

    ARef (region text -> box):  "ARef : {region text} : {box text}"
    GCap (box -> region text):  "GCap : {box text} : {region text}"

The box text is the box codec's (:mod:`locca.boxes`: ``"ymin xmin ymax xmax"``
bins or ``<locNNNN>`` tokens, order y x y x, as the task configures). The REC
transfer task writes its target as the box text alone (after the prompt
``locate en {expression}``), so it has nothing to parse here beyond
:func:`locca.boxes.decode_box`.

:func:`aref_text` / :func:`gcap_text` only concatenate with ``+``, so they
build Python strings and TensorFlow string tensors alike (the seqio
preprocessor calls them on tensors). Zero-shot evaluation prompts are the
target up to and including the separator before the part to predict.
"""

from __future__ import annotations

__all__ = [
    "AREF",
    "GCAP",
    "SEP",
    "TASK_PREFIXES",
    "aref_text",
    "gcap_text",
    "split_aref",
    "split_gcap",
]

AREF = "ARef"
GCAP = "GCap"
SEP = " : "
# The first words of the location-task sequences (a captioning decoder must not start with them).
TASK_PREFIXES = (AREF + " :", GCAP + " :")


def aref_text(region, box):
    """``"ARef : {region} : {box}"`` (str or tf.string tensors)."""
    return AREF + SEP + region + SEP + box


def gcap_text(box, region):
    """``"GCap : {box} : {region}"`` (str or tf.string tensors)."""
    return GCAP + SEP + box + SEP + region


def split_aref(text: str) -> tuple[str, str] | None:
    """``"ARef : c : b"`` -> (prompt ``"ARef : c :"``, box text ``"b"``); None if malformed."""
    head, sep, tail = text.rpartition(SEP)
    if not sep or not head.startswith(AREF):
        return None
    return head + SEP.rstrip(), tail


def split_gcap(text: str) -> tuple[str, str] | None:
    """``"GCap : b : c"`` -> (prompt ``"GCap : b :"``, region text ``"c"``); None if malformed."""
    parts = text.split(SEP, 2)
    if len(parts) != 3 or parts[0] != GCAP:
        return None
    return parts[0] + SEP + parts[1] + SEP.rstrip(), parts[2]


def aref_region(prompt: str) -> str:
    """The region text of an ARef prompt ``"ARef : c :"`` (``""`` if it is not one)."""
    head = AREF + SEP
    tail = SEP.rstrip()
    if not (prompt.startswith(head) and prompt.endswith(tail)):
        return ""
    return prompt[len(head) : -len(tail)]
