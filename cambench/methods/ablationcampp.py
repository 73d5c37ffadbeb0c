"""Ablation-CAM++. Salama, Adly and Torki, "Ablation-CAM++: Grouped Recursive Visual Explanations
for Deep Convolutional Networks", ICIP 2022, https://doi.org/10.1109/ICIP46576.2022.9897617.
No code released.

The abstract: Ablation-CAM's weights, w_S = (y_c - y_c^(S)) / |y_c| with the channels of S set to
zero, but for groups of channels found by clustering; each group is the root of a binary tree built
by splitting it recursively, ablating each subgroup, and pruning the tree. The paper's body (its
split rule, pruning rule and group count) could not be read when this was written; this is our
reading of the abstract, each choice a parameter:

    roots: k-means (seeded k-means++, :mod:`cambench.methods.clustering`) of the flattened maps A_k
        into ``groups`` clusters
    a node S with w_S > ``threshold`` and |S| > 1 splits in two by 2-means of its maps (halves in
        channel order where 2-means leaves one side empty); both children are ablated
    a node that does not split is a leaf: each of its channels gets w_k = w_S / |S|
    L = ReLU(sum_k w_k A_k)

On a linear tail the weights add up (w_S = sum_{k in S} w_k of Ablation-CAM), so a leaf shares its
group's Ablation-CAM weight equally; with ``threshold = -inf`` every leaf is one channel and the map
is Ablation-CAM's. Each level of the trees of all images of a batch goes through the layers after
the target layer only, in large chunks, as Ablation-CAM. Cost: 1 forward pass and at most
2K - G tail passes (every node of G full binary trees with K leaves); pruning runs far fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, MethodError, register, weighted_sum
from cambench.methods.clustering import ITERATIONS, TOLERANCE, kmeans
from cambench.models.engine import Passes
from cambench.models.scorer import take_rows


@register("ablationcampp")
class AblationCAMPlusPlus(CAMMethod):
    paper = "Salama et al., ICIP 2022"
    summary = (
        "Ablation-CAM++ (our reading of the abstract): Ablation-CAM weights of k-means channel groups, "
        "split recursively by 2-means while w_S > threshold; a leaf's channels share w_S"
    )
    checked = "formula; equals Ablation-CAM without pruning (paper body unverified)"
    cost = "1F + (2K - G) T at most"

    @dataclass
    class Params(CAMMethod.Params):
        groups: int = 8
        threshold: float = 0.0
        iterations: int = ITERATIONS
        tolerance: float = TOLERANCE

        def check(self) -> None:
            if self.groups < 1 or self.iterations < 1 or self.tolerance < 0:
                raise MethodError(
                    "ablationcampp needs groups >= 1, iterations >= 1 and tolerance >= 0, "
                    f"got {self.groups}, {self.iterations} and {self.tolerance}"
                )

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1, tail=2 * channels - min(self.groups, channels))

    def raw_map(self, fw: Forward) -> Tensor:
        activation, *side = fw.carries[-1]
        a = fw.activations[-1]
        b, k = a.shape[:2]
        points = torch.cat([a.flatten(2), a.new_zeros(b, 1, a[0, 0].numel())], 1)  # row K: padding
        clean = fw.logits.gather(1, fw.targets[:, None])[:, 0]
        layer = len(fw.carries) - 1

        def ablation(owner: Tensor, members: Tensor) -> Tensor:
            """w_S of each node (image ``owner``, channels ``members`` padded with K), nodes image-major."""
            images = owner.cpu()

            def ablated(rows: slice) -> tuple[Tensor, ...]:
                keep = torch.ones(len(images[rows]), k + 1, dtype=activation.dtype, device=a.device)
                keep.scatter_(1, members[rows], 0.0)
                kept = take_rows(activation, images[rows]) * keep[:, :k, None, None]  # (torch.where is slower)
                return (kept, *(take_rows(s, images[rows]) for s in side))

            scores = self.engine.scorer.score(fw.targets[owner], ablated, layer=layer, output=self.score)
            return (clean[owner] - scores) / clean[owner].abs().clamp_min(1e-12)

        # roots: the non-empty k-means groups of each image
        generator = self.engine.generator(a.device)  # fresh: an image's groups do not depend on its batch
        counts = torch.full((b, 1), min(self.groups, k), device=a.device)
        labels = kmeans(a.flatten(2), counts, generator, None, self.iterations, self.tolerance).labels[:, 0]
        owner, members = _nodes(labels, int(counts.max()), k)
        weights = torch.zeros(b, k + 1, device=a.device)
        while len(owner):
            scores = ablation(owner, members)
            sizes = (members < k).sum(1)
            split = (scores > self.threshold) & (sizes > 1)
            leaf = ~split
            share = (scores / sizes)[leaf, None].expand(-1, members.shape[1])
            weights.index_put_((owner[leaf, None].expand_as(share), members[leaf]), share)
            owner, members = self._split(points, owner[split], members[split])
        return weighted_sum(weights[:, :k], a)

    def _split(self, points: Tensor, owner: Tensor, members: Tensor) -> tuple[Tensor, Tensor]:
        """Both children of each node, by 2-means of its maps: (owner, members) of the children, image-major."""
        k = points.shape[1] - 1
        if not len(owner):
            return owner, members
        real = members < k
        sizes = real.sum(1, keepdim=True)
        left = torch.zeros_like(real)
        for rows in _buckets(sizes[:, 0]):  # each group of nodes padded to its own width, not the largest node's
            width = int(sizes[rows].max())
            mine, weights = members[rows, :width], real[rows, :width]
            two = torch.full((len(rows), 1), 2, device=points.device)
            generator = self.engine.generator(points.device)  # the same draws in every group
            labels = kmeans(points[owner[rows, None], mine], two, generator, weights, self.iterations, self.tolerance)
            left[rows, :width] = (labels.labels[:, 0] == 0) & weights
        lefts = left.sum(1, keepdim=True)
        position = torch.arange(members.shape[1], device=points.device)
        halves = real & (position < sizes // 2)
        left = torch.where((lefts == 0) | (lefts == sizes), halves, left)  # 2-means left one side empty
        right = real & ~left
        children = torch.stack([_pack(members, left, k), _pack(members, right, k)], 1).flatten(0, 1)
        width = int((children < k).sum(1).max())
        return owner.repeat_interleave(2), children[:, :width]


def _buckets(sizes: Tensor) -> list[Tensor]:
    """The nodes (indices) in at most two groups by size, cut where the padded work, the sum over
    groups of count x largest size, is least (a few large nodes would pad every small one)."""
    ordered, order = sizes.sort()
    count = torch.arange(1, len(sizes) + 1, device=sizes.device)
    cut = int((count * ordered + (len(sizes) - count) * ordered[-1]).argmin()) + 1
    return [order[:cut], order[cut:]] if cut < len(sizes) else [order]


def _nodes(labels: Tensor, count: int, k: int) -> tuple[Tensor, Tensor]:
    """The non-empty groups of each image as nodes, image-major: owner (M,) and members (M, P) padded with K."""
    b = len(labels)
    member = labels[:, None, :] == torch.arange(count, device=labels.device)[None, :, None]  # (B, G, K)
    member = member.flatten(0, 1)
    channels = torch.arange(k, device=labels.device).expand(len(member), k)
    packed = _pack(channels, member, k)
    present = member.any(1)
    width = int(member.sum(1).max())
    return torch.arange(b, device=labels.device).repeat_interleave(count)[present], packed[present, :width]


def _pack(members: Tensor, keep: Tensor, k: int) -> Tensor:
    """The kept entries of each row moved to its front, in order, the rest set to K (padding)."""
    position = torch.arange(members.shape[1], device=members.device)
    order = torch.where(keep, position, position + members.shape[1]).argsort(1)
    packed = members.gather(1, order)
    return torch.where(position < keep.sum(1, keepdim=True), packed, k)
