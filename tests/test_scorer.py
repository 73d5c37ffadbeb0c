"""The scorer's chunk-size probe (on real rows, no work wasted) and its row helpers."""

import torch
from torch import nn

from cambench.models.scorer import ChunkProbe, Scorer, expand_rows, owners
from cambench.models.split import split_model


def run_probe(per_row: dict[int, list[float]], limit: int = 256) -> tuple[ChunkProbe, list[int]]:
    """Feed the probe the per-row times of each size's successive runs until it settles."""
    probe, sizes, seen = ChunkProbe(limit=limit), [], {}
    while probe.best is None:
        size = probe.next_size()
        run = seen[size] = seen.get(size, -1) + 1
        sizes.append(size)
        probe.record(size, per_row[size][run] * size)
    return probe, sizes


def test_probe_doubles_until_two_sizes_are_ten_percent_slower_per_row_then_keeps_the_fastest():
    # ms per image as resnet18 on 2 CPU cores; the first run at each size pays one-time costs
    times = {1: 30.0, 2: 26.0, 4: 25.0, 8: 23.5, 16: 26.0, 32: 26.4, 64: 38.0}
    probe, sizes = run_probe({size: [3 * t, t, t] for size, t in times.items()})
    # three runs a size; 16 and 32 are both > 1.1 x the best per row: settle on 8
    assert sizes == [s for s in (1, 2, 4, 8, 16, 32) for _ in range(3)]
    assert probe.best == 8 and probe.next_size() == 8


def test_probe_settles_on_the_smallest_size_within_noise_of_the_fastest():
    times = {1: 30.0, 2: 26.0, 4: 24.0, 8: 23.8, 16: 23.5, 32: 26.0, 64: 26.4}
    probe, _ = run_probe({size: [3 * t, t, t] for size, t in times.items()})
    assert probe.best == 4  # 24.0 is within 3% of the fastest (16: 23.5); 2 is not


def test_a_load_spike_in_one_run_does_not_decide_the_chunk():
    times = {1: [9, 30, 30], 2: [9, 400, 26], 4: [9, 25, 25], 8: [9, 23.5, 23.5], 16: [9, 26, 26], 32: [9, 27, 27]}
    probe, _ = run_probe(times)
    assert probe.best == 8 and probe.per_row[2] == 26  # the faster of the two timed runs counts


def test_probe_stops_at_its_limit_and_ignores_partial_chunks():
    probe = ChunkProbe(limit=4)
    for size in (1, 1, 1, 2, 2, 2):
        probe.record(size, 1.0)  # faster per row at every size
    probe.record(3, 0.1)  # a short last chunk of a call: not a measurement
    assert probe.best is None and probe.next_size() == 4
    for _ in range(3):
        probe.record(4, 1.0)
    assert probe.best == 4


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_scores_do_not_depend_on_the_chunk_size_and_probing_uses_real_rows():
    model = Linear().eval()
    images = torch.randn(9, 1, 2, 3)
    targets = torch.randint(5, (9,))
    expected = model(images).softmax(1).gather(1, targets[:, None])[:, 0]
    probed = Scorer(split_model(model, []))
    for scorer in (Scorer(split_model(model, []), 1), Scorer(split_model(model, []), 4), probed):
        torch.testing.assert_close(scorer(images, targets), expected)
    assert list(probed.probes) == [(None, (1, 2, 3))]  # one probe per kind of row
    logits = Scorer(split_model(model, []), 2)(images, targets, output="logit")
    torch.testing.assert_close(logits, model(images).gather(1, targets[:, None])[:, 0])


def test_rows_are_image_major_and_expanded_within_one_image():
    image, k = owners(slice(5, 9), 4, torch.device("cpu"))
    assert image.tolist() == [1, 1, 1, 2] and k.tolist() == [1, 2, 3, 0]
    per_image = torch.arange(3.0).view(3, 1)
    within = expand_rows(per_image, slice(4, 7), 4)
    assert within.tolist() == [[1.0]] * 3 and within.stride(0) == 0  # a view, not a copy
    assert expand_rows(per_image, slice(6, 10), 4).view(-1).tolist() == [1.0, 1.0, 2.0, 2.0]
