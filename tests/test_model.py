import pytest
import torch

from inceptionv3 import InceptionOutputs, InceptionV3, count_flops, count_parameters
from inceptionv3.errors import InputError


def test_parameter_counts_match_the_published_ones():
    assert count_parameters(InceptionV3()) == 23_834_568
    assert count_parameters(InceptionV3(aux_logits=True)) == 27_161_264


def test_parameter_names_and_shapes_match_torchvision():
    import torchvision

    reference = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    ours = InceptionV3(aux_logits=True).state_dict()
    assert list(ours) == list(reference)
    assert all(ours[k].shape == reference[k].shape for k in ours)


def test_flops_in_both_conventions():
    model = InceptionV3()
    assert count_flops(model) == 5_713_216_096
    assert count_flops(model, convention="mmpretrain") == 5_745_177_632
    with pytest.raises(InputError, match="convention"):
        count_flops(model, convention="fvcore")


def test_every_conv_block_is_biasless_conv_then_bn_eps_1e3():
    blocks = [m for m in InceptionV3(aux_logits=True).modules() if hasattr(m, "conv") and hasattr(m, "bn")]
    assert len(blocks) == 96  # 94 in the trunk, 2 in the auxiliary head
    assert all(b.conv.bias is None and b.bn.eps == 1e-3 for b in blocks)


def test_features_head_and_pre_logits():
    model = InceptionV3(num_classes=10).eval()
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 2048, 8, 8)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, 2048)
        torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
        torch.testing.assert_close(model.forward_head(features), model(x))


def test_named_taps_come_from_one_pass_that_stops_after_the_deepest():
    model = InceptionV3(num_classes=10, aux_logits=True).eval()
    assert model.feature_stages()[:4] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1"]
    assert model.feature_stages()[-1] == "Mixed_7c" and "AuxLogits" not in model.feature_stages()
    ran = []
    for name in model.feature_stages():
        getattr(model, name).register_forward_hook(lambda *_, name=name: ran.append(name))
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        taps = model.forward_intermediates(x, ["Mixed_6e", "maxpool2", "Mixed_6d.branch1x1"])
        assert list(taps) == ["Mixed_6e", "maxpool2", "Mixed_6d.branch1x1"]
        assert ran[-1] == "Mixed_6e" and "Mixed_7a" not in ran
        assert taps["maxpool2"].shape == (2, 192, 35, 35) and taps["Mixed_6d.branch1x1"].shape == (2, 192, 17, 17)
        # the deepest stage is exactly what forward_features computes, so the two cannot drift apart
        assert torch.equal(model.forward_intermediates(x, ["Mixed_7c"])["Mixed_7c"], model.forward_features(x))
    for bad in ("Mixed_8a", "Mixed_6d.branch9x9", "AuxLogits", "fc"):
        with pytest.raises(InputError, match="unknown feature tap"):
            model.forward_intermediates(x, [bad])
    with pytest.raises(InputError, match="at least 75x75"):
        model.forward_intermediates(torch.randn(1, 3, 60, 60), ["maxpool1"])


def test_eval_returns_tensor_and_training_with_aux_returns_named_outputs():
    model = InceptionV3(num_classes=7, aux_logits=True)
    x = torch.randn(2, 3, 299, 299)
    out = model.train()(x)
    assert isinstance(out, InceptionOutputs)
    assert out.logits.shape == (2, 7) and out.aux_logits.shape == (2, 7)
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)
        assert isinstance(InceptionV3(num_classes=7).train()(x), torch.Tensor)


def test_reset_classifier_replaces_both_heads():
    model = InceptionV3(aux_logits=True)
    model.reset_classifier(5)
    assert model.fc.out_features == 5 and model.AuxLogits.fc.out_features == 5 and model.num_classes == 5
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 299, 299)).shape == (1, 5)


def test_a_reset_head_starts_near_uniform_as_training_draws_it():
    torch.manual_seed(0)
    model = InceptionV3(num_classes=1000, aux_logits=True)
    model.reset_classifier(1000)
    for head in (model.fc, model.AuxLogits.fc):
        assert abs(float(head.weight.detach().std()) - 0.01) < 0.0005 and float(head.bias.detach().abs().max()) == 0.0


@pytest.mark.parametrize("size", [(75, 75), (75, 300), (123, 97), (512, 384)])
def test_any_input_of_at_least_75_works(size):
    with torch.no_grad():
        assert InceptionV3(num_classes=3).eval()(torch.randn(1, 3, *size)).shape == (1, 3)


@pytest.mark.parametrize("size", [(74, 299), (299, 40)])
def test_small_inputs_get_a_clear_error(size):
    with pytest.raises(InputError, match="at least 75x75"):
        InceptionV3().eval()(torch.randn(1, 3, *size))


def test_wrong_channel_count_gets_a_clear_error():
    with pytest.raises(InputError, match="N x 3 x H x W"):
        InceptionV3().eval()(torch.randn(1, 1, 299, 299))


def test_count_include_pad_changes_only_the_pool_branches():
    torch.manual_seed(0)
    include = InceptionV3(num_classes=4).eval()
    exclude = InceptionV3(num_classes=4, count_include_pad=False).eval()
    exclude.load_state_dict(include.state_dict())
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        assert not torch.allclose(include(x), exclude(x))
        inner = torch.randn(1, 192, 35, 35)
        a, b = include.Mixed_5b._avg_pool(inner), exclude.Mixed_5b._avg_pool(inner)
        torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1])
        torch.testing.assert_close(a[..., 0, 0] * 9 / 4, b[..., 0, 0])


def test_scripted_and_traced_models_match_eager():
    model = InceptionV3(num_classes=10, aux_logits=True).eval()
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(torch.flip(x, [0])), torch.flip(expected, [0]))
    with pytest.raises(torch.jit.Error, match="at least 75x75"):
        scripted(torch.randn(1, 3, 60, 60))
