"""Every model builds for several knob combinations, gives the right output shape and
matches the parameter counts of the spec."""

from __future__ import annotations

import pytest
import torch

from mnistcnn import models
from mnistcnn.base.config import compose_config
from mnistcnn.base.errors import UserError
from mnistcnn.models.layers import Dropout


def build(*overrides, num_classes=10):
    return models.build(compose_config(list(overrides)).model, num_classes)


@pytest.mark.parametrize("overrides, classes, trainable, total", [
    (["model=conv5x5"], 10, 827_738, 827_738),
    (["model=keras"], 10, 277_834, 278_858),
    (["model=keras", "model.conv_layers=1"], 10, None, 1_421_322),
    (["model=classic"], 10, 21_840, 21_840),
    (["model=classic", "model.hidden=25"], 10, 13_565, 13_565),
    (["model=tiny"], 10, 4_470, 4_470),
    (["model=tiny"], 4, 4_368, 4_368),
    (["model=mobilenet"], 10, None, 50_698),
    (["model=mobilenet", "model.conv_blocks=4", "model.mobile_blocks=0"], 10, None, 391_850),
])
def test_parameter_counts_match_the_spec(overrides, classes, trainable, total):
    counts = models.param_counts(build(*overrides, num_classes=classes))
    assert counts["total"] == total
    if trainable is not None:
        assert counts["trainable"] == trainable
    assert counts["trainable"] + counts["non_trainable"] == counts["total"]


def test_mobilenet_blocks_save_parameters_against_plain_convs_of_the_same_depth():
    mobile = models.param_counts(build("model=mobilenet"))["total"]
    plain = models.param_counts(build("model=mobilenet", "model.conv_blocks=4",
                                      "model.mobile_blocks=0"))["total"]
    assert mobile < plain / 5
    convs = [m for m in build("model=mobilenet").modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(m.groups > 1 for m in convs) == 3  # one depthwise conv per MobileNet block


KNOBS = [
    ["model=conv5x5", "model.features=2"],
    ["model=conv5x5", "model.features=4"],
    ["model=conv5x5", "model.features=8"],
    ["model=conv5x5", "model.features=32", "model.batchnorm=true", "model.dropout=0.3"],
    ["model=conv5x5", "model.channels=[8,8,8]", "model.kernel=3", "model.hidden=64"],
    ["model=conv5x5", "model.pool=avg", "model.activation=tanh"],
    ["model=keras", "model.conv_layers=3", "model.dense_layers=1"],
    ["model=keras", "model.conv_layers=0", "model.batchnorm=false"],
    ["model=keras", "model.activation=sigmoid", "model.pool=avg"],
    ["model=classic", "model.hidden=25", "model.pool=avg", "model.batchnorm=true"],
    ["model=classic", "model.activation=gelu", "model.dropout=0"],
    ["model=tiny", "model.batchnorm=true", "model.dropout=0.3"],
    ["model=tiny", "model.activation=elu", "model.pool=avg"],
    ["model=mobilenet", "model.conv_blocks=3", "model.mobile_blocks=1"],
    ["model=mobilenet", "model.conv_blocks=0", "model.mobile_blocks=6", "model.width=8"],
    ["model=mobilenet", "model.batchnorm=false", "model.activation=leaky_relu"],
]


@pytest.mark.parametrize("overrides", KNOBS, ids=lambda o: " ".join(o))
@pytest.mark.parametrize("classes", [10, 4])
def test_every_knob_combination_builds_and_trains_a_step(overrides, classes):
    model = build(*overrides, num_classes=classes)
    x = torch.randn(3, 1, 28, 28)
    out = model(x)
    assert out.shape == (3, classes)
    out.sum().backward()  # shapes agree end to end, including the backward pass
    assert all(p.grad is not None for p in model.parameters())


def test_embedding_names_a_module_with_the_bottleneck_width():
    model = build("model=conv5x5", "model.features=2")
    module = dict(model.named_modules())[model.embedding]
    seen = []
    module.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.eval()(torch.zeros(5, 1, 28, 28))
    assert seen == [(5, 2)]
    for name in ("keras", "classic", "tiny", "mobilenet"):
        model = build(f"model={name}")
        assert model.embedding in dict(model.named_modules())


@pytest.mark.parametrize("overrides, stage", [
    (["model=keras", "model.conv_layers=4"], "conv4"),
    (["model=classic", "model.kernel=13"], "conv2"),
    (["model=conv5x5", "model.channels=[4,4,4,4,4,4]"], "pool5"),
])
def test_impossible_architectures_fail_at_build_naming_the_stage(overrides, stage):
    with pytest.raises(UserError, match=f"stage '{stage}' .*(too small|to nothing)"):
        build(*overrides)


def test_layer_table_lists_shapes_and_sums_to_the_totals():
    model = build("model=keras")
    rows = models.layer_table(model)
    assert rows[0]["output"] == (64, 26, 26)
    assert rows[-1]["output"] == (10,)
    assert sum(r["params"] for r in rows) == models.param_counts(model)["total"]
    text = models.format_layer_table(model, "keras")
    assert "non-trainable params:" in text and "1,024" in text and "278,858" in text


@pytest.mark.parametrize("p", [0.25, 0.5, 0.3])
def test_fast_dropout_keeps_the_right_share_and_preserves_the_mean(p):
    drop = Dropout(p).train()
    torch.manual_seed(0)
    x = torch.ones(64, 16, 26, 26).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = drop(x)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()  # the gradient passes exactly where the input was kept
    assert torch.equal(x.grad, out.detach())
    # Masks are independent of the layout and repeat under the same seed.
    torch.manual_seed(1)
    a = drop(torch.ones(8, 100))
    torch.manual_seed(1)
    assert torch.equal(a, drop(torch.ones(8, 100)))
    assert not torch.equal(a, drop(torch.ones(8, 100)))
    assert torch.equal(drop.eval()(x), x)
