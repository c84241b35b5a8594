"""The stabilisers' fields of TrainConfig: validation by name and the CRF schedule as a
fraction of the run."""

import re

import pytest

from crfgan_tf.run import config as config_lib


def _config(**kw):
    return config_lib.TrainConfig(model_dir="(test)", img_size=64, **kw)


def test_crf_decay_fraction_resolves_against_the_run_length():
    assert _config(train_steps=12000, crf_decay_fraction=0.75).crf_decay_steps() == 9000
    assert _config(train_steps=80000, crf_decay_fraction=0.75).crf_decay_steps() == 60000
    # 0: the absolute schedule, as before
    assert _config(train_steps=12000, crf_weight_decay_steps=1000).crf_decay_steps() == 1000
    assert _config(train_steps=1, crf_decay_fraction=0.1).crf_decay_steps() == 1


def test_the_model_gets_the_resolved_schedule():
    from crfgan_tf.run import factory

    model = factory.build_model(_config(train_steps=400, crf_decay_fraction=0.5, width=0.0625,
                                        latent_dim=16))
    assert model.crf_weight_decay_steps == 200


@pytest.mark.parametrize("field,value,message", [
    ("crf_decay_fraction", 1.5, "`crf_decay_fraction` must be in [0, 1]"),
    ("r1_gamma", -1.0, "`r1_gamma` must be >= 0"),
    ("ema_decay", 1.0, "`ema_decay` must be in [0, 1)"),
    ("weight_init", "glorot", "`weight_init` must be one of"),
    ("best_metric", "recall", "`best_metric` must be one of"),
])
def test_bad_values_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(**{field: value}).validate()


def test_defaults_are_the_papers_recipe_with_the_references_initialisation():
    c = _config()
    assert (c.weight_init, c.r1_gamma, c.ema_decay, c.crf_decay_fraction) == \
        ("pytorch", 0.0, 0.0, 0.0)
