"""The fault and bad-input matrix (issue 12): each case a real file or process.

Every case ends in a clear error (the message names the file / record / what
was expected) or a counted skip, and nothing written before is lost. This
module is the one place that lists the cases; the behaviour lives in the
library (readers, checkpointing, gin flags, CLIs).
"""

from __future__ import annotations

import pytest

# ---------------------------------------------------------------------------
# Configs: gin typos are errors before any work starts.


def _parse_pretrain(bindings):
    from locca import pretrain

    pretrain.parse_gin(["pretrain/cap_tiny.gin"], ["MODEL_DIR = '/nonexistent'", *bindings])


def _parse_transfer(bindings):
    from transfer import common

    common.register_configurables()
    common.parse_gin(
        ["runs/eval.gin", "models/t5_tiny.gin", "encoders/locca_tiny.gin", "tasks/shapes_vqa.gin"],
        ["CHECKPOINT_PATH = '/nonexistent'", *bindings],
    )


GIN_CASES = {
    # case: (parser, bindings, words the error names)
    "unknown_macro_pretrain": (_parse_pretrain, ["TRAIN_STEPZ=3"], ["TRAIN_STEPZ", "TRAIN_STEPS"]),
    "unknown_macro_transfer": (_parse_transfer, ["EVAL_SPLT=1"], ["EVAL_SPLT", "EVAL_SPLIT"]),
    "unknown_parameter": (
        _parse_pretrain,
        ["locca.pretrain.train_stepz = 3"],
        ["locca.pretrain", "train_stepz"],
    ),
    "unknown_configurable": (_parse_transfer, ["transfer.trainz.x = 3"], ["transfer.trainz"]),
}


@pytest.mark.parametrize("case", sorted(GIN_CASES))
def test_gin_typo_is_an_error(case, clean_gin):
    parse, bindings, words = GIN_CASES[case]
    with pytest.raises(ValueError) as e:
        parse(bindings)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_gin_used_macros_pass(clean_gin):
    """The control: a used macro, and a macro another job uses (a task file's
    LABEL_SMOOTHING in an eval config) are accepted."""
    import gin

    _parse_pretrain(["TRAIN_STEPS = 3"])
    assert gin.query_parameter("%TRAIN_STEPS") == 3
    gin.clear_config()
    _parse_transfer(["LABEL_SMOOTHING = 0.1"])
