"""Input transformations: exact values, bounds other than [0, 1], BPDA gradients and randomness."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.ndimage
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mlwarden.defenses.evasion import (
    BitDepthReduction,
    Ensemble,
    JpegCompression,
    MedianSmoothing,
    RandomResizePad,
    RandomTransformation,
    jpeg_compress,
    median_filter,
    reduce_bit_depth,
)
from mlwarden.defenses.evasion.adaptive import BPDAView
from mlwarden.errors import ParameterError
from mlwarden.models import LeNet5


class _Shifted(torch.nn.Module):
    """A LeNet that takes inputs in [-1, 1], as models trained on centred data do."""

    bounds = (-1.0, 1.0)

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model((inputs + 1) / 2)


# --- bit-depth reduction -------------------------------------------------------------


def test_bit_depth_levels_span_negative_bounds():
    inputs = torch.tensor([-1.0, -0.9, -0.34, -0.32, -0.01, 0.32, 0.34, 0.9, 1.0]).view(1, 1, 3, 3)
    squeezed = reduce_bit_depth(inputs, 2, (-1.0, 1.0)).flatten()
    levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    assert torch.allclose(squeezed, torch.tensor([-1, -1, -1 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, 1, 1.0]))
    assert all(bool(torch.isclose(levels, value).any()) for value in squeezed)


def test_bit_depth_commutes_with_rescaling(small_batch):
    images, _ = small_batch
    in_unit = reduce_bit_depth(images, 3, (0.0, 1.0))
    in_signed = reduce_bit_depth(images * 2 - 1, 3, (-1.0, 1.0))
    assert torch.allclose(in_signed, in_unit * 2 - 1, atol=1e-6)


def test_bit_depth_defense_uses_model_bounds(lenet, small_batch):
    images, _ = small_batch
    defense = BitDepthReduction(_Shifted(lenet), bits=1)
    assert defense.bounds == (-1.0, 1.0)
    squeezed = defense.transform(images * 2 - 1)
    assert set(squeezed.unique().tolist()) <= {-1.0, 1.0}
    assert bool((squeezed == -1.0).any())


def test_bit_depth_eight_bits_keeps_8bit_images(fashion_test):
    images = fashion_test.images[:32]
    assert torch.allclose(reduce_bit_depth(images, 8), images, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    low=st.floats(-5, 5),
    width=st.floats(0.1, 10),
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_bit_depth_stays_within_half_a_level(low, width, bits, seed):
    high = low + width
    inputs = low + torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * width
    squeezed = reduce_bit_depth(inputs, bits, (low, high))
    step = width / (2**bits - 1)
    assert float(squeezed.min()) >= low - 1e-4
    assert float(squeezed.max()) <= high + 1e-4
    assert float((squeezed - inputs).abs().max()) <= step / 2 + 1e-4


@pytest.mark.parametrize("bits", [0, 17, 2.5, True])
def test_bit_depth_rejects_invalid_bits(lenet, bits):
    with pytest.raises(ParameterError, match="bits must be an integer in"):
        BitDepthReduction(lenet, bits=bits)


# --- median smoothing -------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 4])
def test_median_filter_matches_scipy(size):
    inputs = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(size))
    expected = scipy.ndimage.median_filter(inputs.numpy(), size=(1, 1, size, size), mode="mirror")
    assert np.array_equal(median_filter(inputs, size).numpy(), expected)


def test_median_defense_gradient_is_sparse_without_bpda(lenet, small_batch):
    images, labels = small_batch
    defense = MedianSmoothing(lenet, size=3)
    inputs = images[:4].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(defense(inputs), labels[:4]).backward()
    through_median = (inputs.grad != 0).float().mean()
    inputs.grad = None
    torch.nn.functional.cross_entropy(BPDAView(defense)(inputs), labels[:4]).backward()
    through_bpda = (inputs.grad != 0).float().mean()
    assert through_bpda > through_median


# --- JPEG -------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [20, 75, 95])
def test_jpeg_matches_pillow_on_gray_images(fashion_test, quality):
    images = fashion_test.images[:8]
    ours = jpeg_compress(images, quality).numpy() * 255
    differences = []
    for index in range(len(images)):
        pixels = Image.fromarray((images[index, 0].numpy() * 255).round().astype(np.uint8))
        buffer = io.BytesIO()
        pixels.save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue()))).astype(np.float64)
        differences.append(np.abs(ours[index, 0] - decoded).mean())
    # Pillow's integer DCT differs from the exact one by rounding only, which can flip a coefficient that
    # sits at a quantization boundary, hence a bound on the mean over images.
    assert np.mean(differences) < 0.5


def test_jpeg_lower_quality_removes_more(fashion_test):
    images = fashion_test.images[:16]
    change = {q: float((jpeg_compress(images, q) - images).abs().mean()) for q in (10, 50, 95)}
    assert change[10] > change[50] > change[95]


def test_jpeg_handles_colour_odd_sizes_and_bounds():
    inputs = torch.rand(3, 3, 13, 21, generator=torch.Generator().manual_seed(0)) * 2 - 1
    compressed = jpeg_compress(inputs, 60, (-1.0, 1.0))
    assert compressed.shape == inputs.shape
    assert float(compressed.min()) >= -1.0
    assert float(compressed.max()) <= 1.0
    assert torch.allclose(jpeg_compress((inputs + 1) / 2, 60) * 2 - 1, compressed, atol=1e-5)


def test_jpeg_rejects_invalid_quality(lenet):
    with pytest.raises(ParameterError, match="quality must be an integer in"):
        JpegCompression(lenet, quality=101)


# --- BPDA -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda model: BitDepthReduction(model, bits=3),
        lambda model: JpegCompression(model, quality=50),
        lambda model: JpegCompression(model, quality=50, approximation="cubic"),
    ],
    ids=["bit-depth", "jpeg", "jpeg-cubic"],
)
def test_bpda_keeps_outputs_and_restores_gradient(lenet, small_batch, build):
    images, labels = small_batch
    defense = build(lenet)
    inputs = images[:8].clone().requires_grad_(True)
    masked = torch.autograd.grad(torch.nn.functional.cross_entropy(defense(inputs), labels[:8]), inputs)[0]
    outputs = BPDAView(defense)(inputs)
    restored = torch.autograd.grad(torch.nn.functional.cross_entropy(outputs, labels[:8]), inputs)[0]
    assert float(masked.abs().max()) == 0.0
    assert float(restored.abs().max()) > 0.0
    assert torch.allclose(outputs, defense(images[:8]), atol=1e-5)


# --- randomized transformations ------------------------------------------------------------


@pytest.mark.parametrize("cls", [RandomResizePad, RandomTransformation])
def test_random_defense_is_seeded(lenet, small_batch, cls):
    images, _ = small_batch
    first, second = cls(lenet, seed=3), cls(lenet, seed=3)
    draw = first.transform(images)
    assert torch.equal(draw, second.transform(images))
    assert not torch.equal(draw, first.transform(images))
    first.reseed(3)
    assert torch.equal(draw, first.transform(images))


def test_random_resize_pads_with_the_lower_bound(lenet, small_batch):
    images, _ = small_batch
    defense = RandomResizePad(_Shifted(lenet), min_size=14, seed=0)
    resized = defense.transform(images * 2 - 1)
    assert resized.shape == images.shape
    assert float(resized.min()) >= -1.0 - 1e-6
    assert float(resized.max()) <= 1.0 + 1e-6
    # Shrunk to at most 28 pixels and padded: the canvas border is mostly the lower bound.
    border = torch.cat([resized[:, :, 0, :], resized[:, :, -1, :]], dim=2)
    assert float((border == -1.0).float().mean()) > 0.5


def test_random_resize_rejects_min_size_above_side(lenet, small_batch):
    with pytest.raises(ParameterError, match="min_size 40 exceeds"):
        RandomResizePad(lenet, min_size=40).transform(small_batch[0])


def test_random_transformation_stays_in_bounds(lenet, small_batch):
    images, _ = small_batch
    transformed = RandomTransformation(lenet, count=3, seed=1).transform(images)
    assert transformed.shape == images.shape
    assert float(transformed.min()) >= 0.0
    assert float(transformed.max()) <= 1.0


def test_random_transformation_rejects_unknown_kind(lenet):
    with pytest.raises(ParameterError, match="unknown transformation 'blur'"):
        RandomTransformation(lenet, kinds=["noise", "blur"])


# --- ensembles ----------------------------------------------------------------------------


def test_ensemble_average_and_majority(lenet, small_batch):
    images, _ = small_batch
    torch.manual_seed(0)
    others = [LeNet5().eval(), LeNet5().eval()]
    members = [lenet, *others]
    with torch.no_grad():
        probabilities = torch.stack([torch.softmax(member(images), dim=1) for member in members])
        average = Ensemble(members, vote="average")(images)
        majority = Ensemble(members, vote="majority")(images)
    assert torch.allclose(average.exp(), probabilities.mean(0), atol=1e-5)
    votes = torch.nn.functional.one_hot(probabilities.argmax(2), 10).sum(0)
    top_votes = votes.gather(1, majority.argmax(1, keepdim=True)).squeeze(1)
    assert torch.equal(top_votes, votes.amax(1))


def test_ensemble_majority_masks_gradient_until_bpda(lenet, small_batch):
    images, labels = small_batch
    ensemble = Ensemble([lenet, lenet], vote="majority")
    inputs = images[:8].clone().requires_grad_(True)
    masked = torch.autograd.grad(torch.nn.functional.cross_entropy(ensemble(inputs), labels[:8]), inputs)[0]
    restored = torch.autograd.grad(torch.nn.functional.cross_entropy(ensemble.forward_bpda(inputs), labels[:8]), inputs)[0]
    assert float(masked.abs().max()) == 0.0
    assert float(restored.abs().max()) > 0.0


def test_ensemble_needs_two_members(lenet):
    with pytest.raises(ParameterError, match="at least two models"):
        Ensemble([lenet])


def test_random_transformation_converts_with_module_methods(small_batch):
    defense = RandomTransformation(LeNet5().eval(), seed=0).double()
    assert defense.model.classifier.weight.dtype == torch.float64
    assert defense(small_batch[0][:2].double()).dtype == torch.float64
