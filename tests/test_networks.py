"""Q-networks: shapes, the /255 scaling, the dueling identity, init, the factory."""

import pytest
import torch
from torch import nn

from fastdqn.networks import MLP, NatureCNN, channels_last, make_q_network


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frames(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, generator=g)


def test_nature_cnn_layers_and_output_shape():
    net = make_q_network((4, 84, 84), 6)
    assert isinstance(net, NatureCNN)
    convs = [m for m in net.torso if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 32, (8, 8), (4, 4)), (32, 64, (4, 4), (2, 2)), (64, 64, (3, 3), (1, 1))]
    # 84 -> 20 -> 9 -> 7: 64 * 7 * 7 = 3136 features into the fc 512 layer.
    assert net.torso(torch.zeros(2, 4, 84, 84)).shape == (2, 3136)
    assert net.head.q[0].in_features == 3136 and net.head.q[0].out_features == 512
    q = net(_frames())
    assert q.shape == (3, 6) and q.dtype == torch.float32


def test_nips_torso_is_the_2013_network():
    net = make_q_network((4, 84, 84), 6, hidden=256, torso="nips")
    convs = [m for m in net.torso if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (4, 16, (8, 8), (4, 4)), (16, 32, (4, 4), (2, 2))]
    # 84 -> 20 -> 9: 32 * 9 * 9 = 2592 features into the fc 256 layer (Mnih et al. 2013).
    assert net.head.q[0].in_features == 2592 and net.head.q[0].out_features == 256
    assert net(_frames()).shape == (3, 6)
    with pytest.raises(ValueError, match="torso must be one of"):
        make_q_network((4, 84, 84), 6, torso="resnet")


@pytest.mark.parametrize("torso, features", [("nips", 32 * 3 * 3), ("nature", 64 * 1 * 1)])
def test_smallest_frames_the_torsos_take(torso, features):
    # 42 -> 9 -> 3 (-> 1): the conv arithmetic of a --frame-size 42 run; 36 is the Nature torso's floor
    net = make_q_network((4, 42, 42), 4, torso=torso)
    assert net.head.q[0].in_features == features
    assert net(torch.randint(0, 256, (2, 4, 42, 42), dtype=torch.uint8)).shape == (2, 4)
    assert make_q_network((4, 36, 36), 4)(torch.zeros(1, 4, 36, 36, dtype=torch.uint8)).shape == (1, 4)


def test_nature_cnn_scales_uint8_frames_by_255():
    net = make_q_network((4, 84, 84), 4)
    x = _frames()
    expected = net.head(net.torso(x.float() / 255.0))
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    # and the scaling matters: the unscaled input gives something else
    assert not torch.allclose(net.head(net.torso(x.float())), expected)
    # float frames are scaled too, without touching the caller's tensor (channels_last too)
    frames = x.float()
    for _ in range(2):
        torch.testing.assert_close(net(frames), expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(frames, x.float())
        # scale() is forward's first half: the learner scales s' once for both of its nets
        assert torch.equal(net(net.scale(x), scaled=True), net(x))
        net = net.to(memory_format=torch.channels_last)


def test_channels_last_matches_torchs_reorder_byte_for_byte():
    # The replay hands the learner strided views of one (B, stack + n, 84, 84) window of
    # frames: obs = window[:, :4], next_obs = window[:, n:n + 4]; the actor a plain batch.
    window = torch.randint(0, 256, (5, 7, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cases = [window[:, :4], window[:, 3:7], window[:, :4].contiguous(), _frames(2),
             window[:, :3], window[:, :4].float(), window[:0, :4]]  # (the last three: torch's own path)
    for x in cases:
        expected = x.contiguous(memory_format=torch.channels_last)
        got = channels_last(x)
        assert got.shape == expected.shape and got.stride() == expected.stride() and got.dtype == x.dtype
        assert torch.equal(got, x)
    ready = cases[0].contiguous(memory_format=torch.channels_last)
    assert channels_last(ready) is ready


def test_nature_cnn_bf16_autocast_close_to_fp32_with_q_in_fp32():
    net = make_q_network((4, 84, 84), 6, dueling=True)
    x = _frames(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = net.head.value[1](net.head.value[0](net.torso(x.float() / 255.0)))
        q16 = net(x)
    assert hidden.dtype == torch.bfloat16  # the trunk really runs in bf16
    assert q16.dtype == torch.float32  # ... but Q comes out fp32
    torch.testing.assert_close(q16, net(x), rtol=0.05, atol=0.05)


def _argmax_agreement(net, x, min_gap=1e-3):
    """(fraction of inputs whose bf16-autocast argmax equals the fp32 one, inputs counted),
    over the inputs whose fp32 top-two gap is at least ``min_gap``."""
    with torch.no_grad():
        q32 = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q16 = net(x)
    top2 = q32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) >= min_gap
    same = q16.argmax(dim=1) == q32.argmax(dim=1)
    return float(same[clear].float().mean()), int(clear.sum())


@pytest.mark.parametrize("obs_shape, count", [((16,), 4000), ((4, 84, 84), 512)])
def test_bf16_argmax_equals_fp32_argmax_at_realistic_q_and_action_gaps(obs_shape, count):
    # Q ~ 10 (a value-stream bias of 10) with advantages spread over a few hundredths: at Q ~
    # 10 bf16's spacing is 0.0625, so rounding Q itself would tie most actions (and argmax
    # would pick action 0); with the output layers in fp32 the argmax matches fp32.
    torch.manual_seed(0)
    net = make_q_network(obs_shape, 6, dueling=True)
    with torch.no_grad():
        net.head.value[2].bias.fill_(10.0)
        net.head.advantage[2].weight.mul_(0.02)
    if len(obs_shape) == 3:
        x = torch.randint(0, 256, (count, *obs_shape), dtype=torch.uint8)
    else:
        x = torch.randn(count, *obs_shape)
    with torch.no_grad():
        q = net(x)
    assert 9.0 < float(q.mean()) < 11.0
    agreement, counted = _argmax_agreement(net, x)
    assert counted >= 0.8 * count
    assert agreement >= 0.999, agreement


@pytest.mark.parametrize("obs_shape", [(4, 84, 84), (4,)])
def test_dueling_q_minus_mean_is_value(obs_shape):
    net = make_q_network(obs_shape, 5, dueling=True)
    x = _frames(4) if len(obs_shape) == 3 else torch.randn(4, *obs_shape)
    q = net(x)
    if isinstance(net, NatureCNN):
        features = net.torso(x.float() / 255.0)
    else:
        features = net.torso(x)
    value = net.head.value(features)  # (B, 1)
    advantage = net.head.advantage(features)  # (B, A)
    assert value.shape == (4, 1)
    # Q = V + A - mean_a A, so mean_a Q == V and Q - V == A - mean_a A.
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), value, atol=1e-5, rtol=0)
    torch.testing.assert_close(q - value, advantage - advantage.mean(dim=1, keepdim=True),
                               atol=1e-5, rtol=0)
    # and the advantage stream really is used: Q differs across actions
    assert (q.max(dim=1).values - q.min(dim=1).values).min() > 0


def test_mlp_for_vector_observations_with_configurable_hidden():
    net = make_q_network((4,), 2)
    assert isinstance(net, MLP)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 128), (128, 128), (128, 2)]
    assert net(torch.randn(7, 4)).shape == (7, 2)

    net = make_q_network((8,), 3, hidden=(64, 32, 16))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (8, 64), (64, 32), (32, 16), (16, 3)]


def test_factory_rejects_other_shapes():
    with pytest.raises(ValueError):
        make_q_network((84, 84), 4)
    with pytest.raises(ValueError):
        make_q_network((4, 84, 80), 4)


def test_orthogonal_init_with_relu_gain_and_zero_bias():
    net = make_q_network((4,), 2, hidden=(16, 16))
    first, out = net.torso[0], net.head.q[2]
    # first: (16, 4), more rows than columns -> orthonormal columns times sqrt(2)
    torch.testing.assert_close(first.weight.T @ first.weight, 2.0 * torch.eye(4), atol=1e-5,
                               rtol=0)
    # output: (2, 16) -> orthonormal rows, gain 1
    torch.testing.assert_close(out.weight @ out.weight.T, torch.eye(2), atol=1e-5, rtol=0)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
    conv = make_q_network((4, 84, 84), 2).torso[0]
    w = conv.weight.reshape(32, -1)  # 32 filters of 256 weights: orthogonal rows
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(32), atol=1e-4, rtol=0)
    assert torch.count_nonzero(conv.bias) == 0
