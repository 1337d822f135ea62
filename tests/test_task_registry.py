"""tasks.registry: a task or mixture name is one dataset. Registering a name again
with the same configuration returns the registered one; with another
configuration it raises (it used to return the first registration silently, so
two runs with different sizes under one name shared the first one's data)."""

import functools

import pytest
import seqio

from tasks import pretrain_tasks, registry
from tasks.shapes_tasks import make_shapes_task

SIZES = dict(num_train=6, num_validation=2, num_test=2)


def test_same_configuration_returns_the_registered_task():
    a = make_shapes_task("registry_test_same", "caption", resolution=32, **SIZES)
    b = make_shapes_task("registry_test_same", "caption", resolution=32, **SIZES)
    assert a is b is seqio.get_mixture_or_task("registry_test_same")


def test_other_configuration_under_the_same_name_raises_naming_the_difference():
    kw = dict(resolution=32, num_validation=2, num_test=2, max_objects=3)
    first = pretrain_tasks.make_shapes_pretrain_task("registry_test_pretrain", num_train=8, **kw)
    with pytest.raises(
        ValueError, match=r"'registry_test_pretrain'.*num_train: registered 8, now 16"
    ):
        pretrain_tasks.make_shapes_pretrain_task("registry_test_pretrain", num_train=16, **kw)
    # the first registration is untouched and still what the name returns
    assert seqio.get_mixture_or_task("registry_test_pretrain") is first
    assert len(first.source.scene_indices("train")) == 8
    with pytest.raises(ValueError, match=r"num_bins: registered None, now 32"):
        pretrain_tasks.make_shapes_pretrain_task(
            "registry_test_pretrain", num_train=8, box_encoding="text", num_bins=32, **kw
        )


def test_kind_and_format_are_part_of_the_configuration():
    make_shapes_task("registry_test_kind", "caption", resolution=32, **SIZES)
    with pytest.raises(ValueError, match=r"kind: registered 'caption', now 'vqa'"):
        make_shapes_task("registry_test_kind", "vqa", resolution=32, **SIZES)


def test_a_name_registered_directly_with_seqio_cannot_be_compared_so_it_raises():
    seqio.TaskRegistry.add(
        "registry_test_foreign",
        source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["train"]),
        preprocessors=[],
        output_features={},
    )
    with pytest.raises(ValueError, match="registered outside tasks.registry.add_task"):
        make_shapes_task("registry_test_foreign", "caption", resolution=32, **SIZES)


def test_mixtures_compare_their_tasks_and_rates():
    for kind in ("caption", "vqa"):
        make_shapes_task(f"registry_test_mix_{kind}", kind, resolution=32, **SIZES)
    names = ["registry_test_mix_caption", "registry_test_mix_vqa"]
    m = registry.add_mixture("registry_test_mix", names)
    assert registry.add_mixture("registry_test_mix", list(names)) is m
    with pytest.raises(ValueError, match="tasks: registered"):
        registry.add_mixture("registry_test_mix", names[:1])
    with pytest.raises(ValueError, match="default_rate: registered 1.0, now 2.0"):
        registry.add_mixture("registry_test_mix", names, default_rate=2.0)


def test_describe_compares_values_not_objects_and_never_guesses():
    def f(x, y=0):
        return x + y

    assert registry.describe({"b": (1, 2), "a": None}) == {"a": None, "b": [1, 2]}
    assert registry.describe(functools.partial(f, y=1)) == registry.describe(
        functools.partial(f, y=1)
    )
    assert registry.describe(functools.partial(f, y=1)) != registry.describe(
        functools.partial(f, y=2)
    )
    # two vocabularies over one model file are the same parameter (not loaded here)
    v1 = seqio.SentencePieceVocabulary("/nonexistent/spm.model", extra_ids=0)
    v2 = seqio.SentencePieceVocabulary("/nonexistent/spm.model", extra_ids=0)
    v3 = seqio.SentencePieceVocabulary("/nonexistent/other.model", extra_ids=0)
    assert registry.describe(v1) == registry.describe(v2) != registry.describe(v3)

    # a function with captured state is compared by identity, not by its name
    def adder(k):
        return lambda x: x + k

    closures = [adder(1), adder(2)]
    assert registry.describe(closures[0]) != registry.describe(closures[1])
    assert registry.describe(f) == registry.describe(f)
    # an object we cannot compare equals only itself
    o1, o2 = object(), object()
    assert registry.describe(o1) == registry.describe(o1) != registry.describe(o2)
