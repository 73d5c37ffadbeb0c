"""The score-weighted family beyond Score-CAM: SS-CAM, IS-CAM, Group-CAM and Abs-CAM, and the helper
they share with Score-CAM (:func:`mask_scores`).

Each is checked against a formula worked out by hand or in closed form on a stub model, and
against an independent reference loop (one image and one channel at a time, plain model calls);
SS-CAM and IS-CAM also against TorchCAM (same noise), whose conventions differ as its Score-CAM's
do: the same reference loop with TorchCAM's conventions reproduces TorchCAM, with ours our
method, and the two differ by a shown margin. Group-CAM is checked against the authors' code
(wofmanaf/Group-CAM, cam/groupcam.py) ported line by line, with kornia's blur. Also: declared
passes, seeded reproducibility of SS-CAM's noise (chunking and batching change no value) and the
noise itself."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import make_engine, make_method
from test_methods_perturbation import SIZE, Stub, capture, images_
from torch import Tensor, nn

from cambench.data.blur import sampled_gaussian_blur
from cambench.methods.scorecam import mask_scores
from cambench.methods.sscam import hash32, row_noise
from cambench.models.engine import Passes


def stub(channels: int = 5, relu: bool = False, flat_channel: bool = False) -> Stub:
    """The perturbation tests' stub with its head scaled down, so that no probability saturates."""
    model = Stub(channels=channels, relu=relu, flat_channel=flat_channel)
    with torch.no_grad():
        model.fc.weight.mul_(0.1)
        model.fc.bias.mul_(0.1)
    return model


def upsample(a: Tensor) -> Tensor:
    return F.interpolate(a[None, None], (SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]


# (mask (H, W), image, channel, copy) -> the copy's mask
Transform = Callable[[Tensor, int, int, int], Tensor]


def reference(
    model: nn.Module, x: Tensor, targets: Tensor, samples: int, transform: Transform, torchcam: bool = False
) -> tuple[Tensor, Tensor]:
    """(weights (B, K), raw map) of the Score-CAM family at ``features``, one image and channel at a time.

    Ours: w_k = mean_n p_c(x * transform(minmax(U(A_k)), n)), flat channels 0 and unscored.
    ``torchcam=True``: TorchCAM's conventions: A_k min-max normalised (+ 1e-8) *before* upsampling,
    w = softmax over channels of mean_n (y_c(x * transform(M_k, n)) - y_c(x)), flat channels scored.
    """
    acts, logits = capture(model, "features", x)
    weights = torch.zeros(acts.shape[:2])
    for b in range(len(x)):
        t = int(targets[b])
        for k in range(acts.shape[1]):
            a = acts[b, k]
            if torchcam:
                mask = upsample((a - a.min()) / ((a - a.min()).max() + 1e-8))
            elif a.max() == a.min():
                continue
            else:
                up = upsample(a)
                mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                out = model(torch.stack([x[b] * transform(mask, b, k, n) for n in range(samples)]))
            weights[b, k] = (out[:, t] - logits[b, t]).mean() if torchcam else out.softmax(1)[:, t].mean()
    if torchcam:
        weights = weights.softmax(1)
    return weights, torch.einsum("bk,bkhw->bhw", weights, acts)


def low_res_normalised(raw: Tensor) -> Tensor:
    """TorchCAM's output normalisation of a raw map: ReLU, minus the min, over the max (+ 1e-8)."""
    cam = torch.relu(raw)
    cam = cam - cam.amin((1, 2), keepdim=True)
    return cam / (cam.amax((1, 2), keepdim=True) + 1e-8)


class Replay:
    """Stands in for TorchCAM's noise distribution: its n-th ``sample`` call returns ``noise[:, :, n]``."""

    def __init__(self, noise: Tensor):
        self.noise, self.calls = noise, 0

    def sample(self, size: torch.Size) -> Tensor:
        out = self.noise[:, :, self.calls % self.noise.shape[2]]
        assert out.shape == size
        self.calls += 1
        return out


def sscam_noise(seed: int, images: int, channels: int, samples: int, sigma: float) -> Tensor:
    """(B, K, N, H, W): the noise our SS-CAM adds to mask k of image b in copy n, rebuilt from its definition."""
    keys = torch.randint(2**32, (images,), generator=torch.Generator().manual_seed(seed))
    k, n = torch.arange(channels), torch.arange(samples)
    rows = hash32(hash32(keys[:, None, None] ^ k[None, :, None]) ^ n[None, None, :])
    return sigma * row_noise(rows.flatten(), (SIZE, SIZE)).view(images, channels, samples, SIZE, SIZE)


# ----------------------------------------------------------------------------------------------
# the shared helper


class SumModel(nn.Module):
    """Logits (sum of the input, 0): class 0 scores sigmoid(sum x), class 1 sigmoid(-sum x)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        s = self.body(x).sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_mask_scores_by_hand():
    """x = [[1, 2], [3, 4]]; maps at input size (no resampling): [[0, 1], [0, 1]] -> mask itself,
    masked sum 6; a flat map -> 0, not scored; [[2, 0], [0, 0]] -> [[1, 0], [0, 0]], sum 1. With a
    substrate of 10 the masked-out pixels add 10 each; copies n = 0, 1 scaled by n + 1 average."""
    model = SumModel()
    rows = []
    model.body.register_forward_pre_hook(lambda m, inputs: rows.append(len(inputs[0])))
    scorer = make_engine(model, "body", batch_size=3).scorer
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    maps = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]], [[5.0, 5.0], [5.0, 5.0]], [[2.0, 0.0], [0.0, 0.0]]]])

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    got = mask_scores(scorer, x, torch.tensor([0]), maps)
    torch.testing.assert_close(got, torch.tensor([[sig(6.0), 0.0, sig(1.0)]]))
    assert sum(rows) == 2  # the flat map was not scored

    got = mask_scores(scorer, x, torch.tensor([1]), maps, substrate=torch.full_like(x, 10.0))
    torch.testing.assert_close(got, torch.tensor([[sig(-26.0), 0.0, sig(-31.0)]]))

    rows.clear()
    got = mask_scores(
        scorer, x, torch.tensor([0]), maps, samples=2, perturb=lambda m, pairs, n: m * (n + 1)[:, None, None]
    )
    expected = torch.tensor([[(sig(6.0) + sig(12.0)) / 2, 0.0, (sig(1.0) + sig(2.0)) / 2]])
    torch.testing.assert_close(got, expected)
    assert sum(rows) == 4


# ----------------------------------------------------------------------------------------------
# SS-CAM


def test_sscam_without_noise_is_scorecam():
    model, x = stub(flat_channel=True), images_()
    scorecam = make_method("scorecam", model, "features")(x)
    out = make_method("sscam", model, "features", samples=3, sigma=0.0)(x)
    assert out.passes == Passes(forward=1 + 5 * 3)
    assert (out.raw - scorecam.raw).abs().max() <= 1e-6 * scorecam.raw.abs().max()


def test_sscam_matches_reference_loop_and_zeroes_flat_channels():
    model, x, targets = stub(flat_channel=True), images_(), torch.tensor([0, 2])
    out = make_method("sscam", model, "features", samples=4, sigma=0.5, seed=3)(x, targets)
    noise = sscam_noise(3, 2, 5, 4, 0.5)
    weights, raw = reference(model, x, targets, 4, lambda m, b, k, n: m + noise[b, k, n])
    assert (weights[:, :4] > 0.01).all() and (weights[:, 4] == 0).all()
    assert (out.raw - raw).abs().max() < 1e-5 * raw.abs().max()
    assert out.passes == Passes(forward=1 + 5 * 4)


def test_sscam_torchcam_agrees_under_its_conventions_and_differs_from_ours():
    """Same noise (replayed into TorchCAM's sampler). TorchCAM normalises A_k before upsampling and
    takes a softmax over channels of the mean logit differences, the Score-CAM paper's Algorithm 1;
    we average the target's probabilities, as the Score-CAM authors' code (and our Score-CAM)."""
    from torchcam.methods import SSCAM as TorchCamSSCAM

    model, x, targets = stub(relu=True), images_(), torch.tensor([1, 0])
    samples, sigma = 3, 0.5
    noise = sscam_noise(0, 2, 5, samples, sigma)
    ours = make_method("sscam", model, "features", samples=samples, sigma=sigma)(x, targets)
    with TorchCamSSCAM(model, "features", num_samples=samples, std=sigma, input_shape=(3, SIZE, SIZE)) as extractor:
        extractor._distrib = Replay(noise)
        with torch.no_grad():
            model(x)
        tc_weights = extractor._get_weights(targets.tolist())[0]
        tc_cams = extractor(targets.tolist())[0]

    def noisy(m, b, k, n):
        return m + noise[b, k, n]

    tc_ref_weights, tc_ref_raw = reference(model, x, targets, samples, noisy, torchcam=True)
    assert (tc_weights - tc_ref_weights).abs().max() < 1e-5
    assert (tc_cams - low_res_normalised(tc_ref_raw)).abs().max() < 1e-4
    weights, raw = reference(model, x, targets, samples, noisy)
    assert (ours.raw - raw).abs().max() < 1e-5 * raw.abs().max()
    torch.testing.assert_close(tc_weights.sum(1), torch.ones(2))  # a distribution over channels
    assert (tc_weights - weights).abs().max() > 0.1
    assert (tc_cams - low_res_normalised(ours.raw)).abs().max() > 0.01  # 100 x the agreement tolerance


def test_sscam_is_seeded_and_neither_chunking_nor_batching_changes_it():
    model, x = stub(relu=True), images_()
    raws = [make_method("sscam", model, "features", samples=3, batch_size=bs)(x).raw for bs in (1, 7, None)]
    scale = raws[0].abs().max()
    assert (raws[0] - raws[1]).abs().max() <= 1e-6 * scale and (raws[0] - raws[2]).abs().max() <= 1e-6 * scale
    one_by_one = make_method("sscam", model, "features", samples=3)  # the generator advances image by image
    assert (torch.cat([one_by_one(x[:1]).raw, one_by_one(x[1:]).raw]) - raws[0]).abs().max() <= 1e-6 * scale
    other_seed = make_method("sscam", model, "features", samples=3, seed=1)(x).raw
    assert (other_seed - raws[0]).abs().max() > 1e-3 * scale


def test_hash32_is_pcg_and_row_noise_is_standard_normal_and_pure():
    def pcg(v: int) -> int:  # Jarzynski and Olano's pcg_hash, in Python integers
        state = (v * 747796405 + 2891336453) % 2**32
        word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) % 2**32
        return (word >> 22) ^ word

    values = [0, 1, 12345, 2**31, 2**32 - 1]
    assert hash32(torch.tensor(values)).tolist() == [pcg(v) for v in values]
    assert len(hash32(torch.arange(1 << 20)).unique()) == 1 << 20  # a bijection

    keys = hash32(torch.arange(2000))
    z = row_noise(keys, (64, 64))
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1) < 0.005 and abs((z**4).mean() - 3) < 0.05
    r = torch.corrcoef(z[:300].flatten(1)).fill_diagonal_(0).abs()
    assert r.sum() / (300 * 299) < 1.05 * math.sqrt(2 / math.pi / 4096)  # the mean |r| of independent rows
    assert torch.equal(row_noise(keys[5:9], (64, 64)), z[5:9])  # each row depends on its key only


# ----------------------------------------------------------------------------------------------
# IS-CAM


def test_iscam_closed_form_on_linear_stub():
    """Without ReLU the stub is affine in its input, y(c z) = c (y(z) - y(0)) + y(0): the masked
    inputs' scores follow from y(x * M_k) and y(0). N = 3 scalings: c = 1/3, 1/3 + 2/3, 1 + 3/3."""
    model, x, targets = stub(), images_(), torch.tensor([2, 1])
    out = make_method("iscam", model, "features", samples=3)(x, targets)
    assert out.passes == Passes(forward=1 + 5 * 3)
    acts, _ = capture(model, "features", x)
    with torch.no_grad():
        y0 = model(torch.zeros(1, 3, SIZE, SIZE))[0]
        weights = torch.zeros(2, 5)
        for b in range(2):
            for k in range(5):
                up = upsample(acts[b, k])
                y = model((x[b] * (up - up.min()) / (up.max() - up.min()))[None])[0]
                scores = [(c * (y - y0) + y0).softmax(0)[targets[b]] for c in (1 / 3, 1.0, 2.0)]
                weights[b, k] = sum(scores) / 3
    assert (weights.max(1).values - weights.min(1).values > 0.01).all()  # the weights tell channels apart
    expected = torch.einsum("bk,bkhw->bhw", weights, acts)
    assert (out.raw - expected).abs().max() < 1e-5 * expected.abs().max()


def test_iscam_torchcam_agrees_under_its_conventions_and_differs_from_ours():
    from torchcam.methods import ISCAM as TorchCamISCAM

    model, x, targets = stub(relu=True), images_(), torch.tensor([0, 2])
    ours = make_method("iscam", model, "features", samples=4)(x, targets)
    with TorchCamISCAM(model, "features", num_samples=4, input_shape=(3, SIZE, SIZE)) as extractor:
        with torch.no_grad():
            model(x)
        tc_weights = extractor._get_weights(targets.tolist())[0]
        tc_cams = extractor(targets.tolist())[0]
    scales = (0.25, 0.75, 1.5, 2.5)  # sum_{j <= i} j / 4

    def scaled(m, b, k, n):
        return m * scales[n]

    tc_ref_weights, tc_ref_raw = reference(model, x, targets, 4, scaled, torchcam=True)
    assert (tc_weights - tc_ref_weights).abs().max() < 1e-5
    assert (tc_cams - low_res_normalised(tc_ref_raw)).abs().max() < 1e-4
    weights, raw = reference(model, x, targets, 4, scaled)
    assert (ours.raw - raw).abs().max() < 1e-5 * raw.abs().max()
    assert (tc_weights - weights).abs().max() > 0.1
    assert (tc_cams - low_res_normalised(ours.raw)).abs().max() > 0.01  # 100 x the agreement tolerance


# ----------------------------------------------------------------------------------------------
# Group-CAM


def test_sampled_gaussian_blur_by_hand_and_against_kornia():
    """A centred delta in a 3 x 3 image, kernel 3: reflect padding folds the outer taps back onto
    the centre, so a corner gets (2 k0)^2, an edge 2 k0 k1, the centre k1^2 (k = [e^-1/2, 1, e^-1/2] / sum)."""
    import kornia

    delta = torch.zeros(1, 1, 3, 3)
    delta[0, 0, 1, 1] = 1
    k0, k1 = math.exp(-0.5) / (1 + 2 * math.exp(-0.5)), 1 / (1 + 2 * math.exp(-0.5))
    corner, edge = (2 * k0) ** 2, 2 * k0 * k1
    expected = torch.tensor([[corner, edge, corner], [edge, k1**2, edge], [corner, edge, corner]])
    torch.testing.assert_close(sampled_gaussian_blur(delta, 3, 1.0)[0, 0], expected)
    x = images_(2, 48)
    for kernel, sigma in ((51, 50.0), (11, 5.0), (5, 0.7)):
        ref = kornia.filters.gaussian_blur2d(x, (kernel, kernel), (sigma, sigma))  # reflect padding by default
        assert (sampled_gaussian_blur(x, kernel, sigma) - ref).abs().max() < 1e-6
    with pytest.raises(ValueError, match="odd"):
        sampled_gaussian_blur(x, 4, 1.0)


def groupcam_authors(model: nn.Module, x: Tensor, target: int, groups: int) -> Tensor:
    """The authors' GroupCAM.forward (cam/groupcam.py) for one image (1, 3, H, W) at ``features``."""
    import kornia

    store = {}
    handle = model.features.register_forward_hook(lambda m, i, o: store.update(a=o))
    logit = model(x)
    handle.remove()
    (gradients,) = torch.autograd.grad(logit[0, target], store["a"])
    activations = store["a"].detach()
    b, k = activations.shape[:2]
    h, w = x.shape[-2:]
    alpha = gradients.view(b, k, -1).mean(2)
    activations = alpha.view(b, k, 1, 1) * activations
    saliency_map = torch.cat(activations.chunk(groups, 1), dim=0).sum(1, keepdim=True)
    saliency_map = F.relu(saliency_map)
    saliency_map = F.interpolate(saliency_map, size=(h, w), mode="bilinear", align_corners=False)
    norm = saliency_map.reshape(groups, -1)
    norm = (norm - norm.min(-1, keepdim=True)[0]) / (norm.max(-1, keepdim=True)[0] - norm.min(-1, keepdim=True)[0])
    norm = norm.reshape(groups, 1, h, w)
    with torch.no_grad():
        blur = kornia.filters.gaussian_blur2d(x, kernel_size=(51, 51), sigma=(50.0, 50.0))
        base_line = F.softmax(model(blur), dim=-1)[0][target]
        output = F.softmax(model(x * norm + blur * (1 - norm)), dim=-1)
    score = F.relu(output[:, target] - base_line).view(groups, 1, 1, 1)
    m = (saliency_map * score).sum(0)[0]
    return (m - m.min()) / (m.max() - m.min())


def test_groupcam_matches_authors_code_on_stub():
    """8 channels in 4 groups of 2 (the authors' code needs G to divide K here)."""
    model, x, targets = stub(channels=8, relu=True), images_(), torch.tensor([1, 0])
    out = make_method("groupcam", model, "features", groups=4)(x, targets)
    assert out.passes == Passes(forward=2 + 4, backward=1)
    for b in range(2):
        expected = groupcam_authors(model, x[b : b + 1], int(targets[b]), 4)
        assert (out.maps[b] - expected).abs().max() < 1e-4


def test_groupcam_uneven_groups_flat_groups_and_fewer_channels_than_groups():
    """K = 5 in G = 4 groups: channels (0, 1), 2, 3, 4 (``torch.chunk`` would make 3 groups and the
    authors' reshape to 4 fails). The last channel is flat (0.3 everywhere): its group's mask is flat
    and gets s_g = 0, unscored. G = 32 > K = 5 gives 5 one-channel groups."""
    model, x, targets = stub(relu=False, flat_channel=True), images_(), torch.tensor([0, 1])
    acts, _ = capture(model, "features", x)
    alpha = model.fc.weight.detach()[targets] / 64  # linear tail: dy_c/dA_k = W_ck / hw everywhere
    weighted = alpha[:, :, None, None] * acts
    sums = torch.relu(torch.stack([weighted[:, :2].sum(1), weighted[:, 2], weighted[:, 3], weighted[:, 4]], 1))
    blurred = sampled_gaussian_blur(x, 51, 50.0)
    with torch.no_grad():
        base = model(blurred).softmax(1)[range(2), targets]
        scores = torch.zeros(2, 4)
        for b in range(2):
            for g in range(3):
                up = upsample(sums[b, g])
                mask = (up - up.min()) / (up.max() - up.min())
                p = model((x[b] * mask + blurred[b] * (1 - mask))[None]).softmax(1)[0, targets[b]]
                scores[b, g] = torch.relu(p - base[b])
    assert (scores[:, :3] > 0).any()
    expected = torch.einsum("bg,bghw->bhw", scores, sums)
    out = make_method("groupcam", model, "features", groups=4)(x, targets)
    assert out.passes == Passes(forward=2 + 4, backward=1)
    assert (out.raw - expected).abs().max() < 1e-5 * expected.abs().max()
    assert make_method("groupcam", model, "features")(x, targets).passes == Passes(forward=2 + 5, backward=1)


# ----------------------------------------------------------------------------------------------
# Abs-CAM


def test_abscam_closed_form_on_linear_stub():
    """Linear tail: dy_c/dA_k = W_ck / hw everywhere, so the initial maps are |W_ck| / 64 A_k; each is
    scored as a Score-CAM mask (the mask of A_k: scaling does not change a min-max normalised map).
    Channels with W_ck < 0 count positively (Grad-CAM would subtract them)."""
    model, x, targets = stub(), images_(), torch.tensor([1, 2])
    out = make_method("abscam", model, "features")(x, targets)
    assert out.passes == Passes(forward=1 + 5, backward=1)
    w = model.fc.weight.detach()[targets]
    assert (w < 0).any() and (w > 0).any()
    acts, _ = capture(model, "features", x)
    with torch.no_grad():
        scores = torch.zeros(2, 5)
        for b in range(2):
            for k in range(5):
                up = upsample(acts[b, k])
                scores[b, k] = model((x[b] * (up - up.min()) / (up.max() - up.min()))[None]).softmax(1)[0, targets[b]]
    expected = torch.einsum("bk,bkhw->bhw", scores * w.abs() / 64, acts)
    assert (out.raw - expected).abs().max() < 1e-5 * expected.abs().max()
