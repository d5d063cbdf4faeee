"""Tests of pairseg.networks: one shared model test class run over every architecture.

A new architecture is tested by adding one line to ``CASES``. Sizes are tiny and odd on purpose
(37 x 45) so that padding, striding and upsampling are exercised; U-Net bases use a small width.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import pytest
import torch

from pairseg.losses import criterion_for
from pairseg.architectures import default_options
from pairseg.constants import ARCHITECTURES, BASES
from pairseg.networks import ENCODER_DECODERS, PAIRWISE_WRAPPERS, PairSegModel, build_model
from pairseg.proxy import proxy_channels, proxy_probabilities, segmentation_from_proxy

CASES = [
    pytest.param("deeplabv3plus", {}, id="deeplabv3plus"),
    pytest.param("unet", {"width": 8}, id="unet"),
    pytest.param("c2fcn", {}, id="c2fcn"),
    pytest.param("c2fcn", {"base": "unet", "aggregate": "max", "width": 8}, id="c2fcn-unet-max"),
    pytest.param("cfcn", {}, id="cfcn"),
    pytest.param("cfcn", {"base": "unet", "width": 8}, id="cfcn-unet"),
    pytest.param("siamfcn", {}, id="siamfcn"),
]

PAIRWISE_CASES = [case for case in CASES if case.values[0] not in BASES]

HEIGHT, WIDTH = 37, 45


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@lru_cache(maxsize=None)
def _cached(arch: str, options: tuple, num_classes: int) -> PairSegModel:
    torch.manual_seed(0)
    return build_model(arch, num_classes, **dict(options))


def fresh(arch: str, options: dict[str, Any], num_classes: int = 1) -> PairSegModel:
    """A private copy of a (cached) seed-0 model, in training mode."""
    return copy.deepcopy(_cached(arch, tuple(sorted(options.items())), num_classes)).train()


def images(n: int = 2, seed: int = 1, size: tuple[int, int] = (HEIGHT, WIDTH)) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def run(model: PairSegModel, xa: torch.Tensor, xb: torch.Tensor) -> Any:
    """The model's training-form forward: single models see ``xa`` only."""
    return model(xa) if model.training_form == "single" else model(xa, xb)


def flat(outputs: Any) -> dict[str, torch.Tensor]:
    return outputs if isinstance(outputs, dict) else {"out": outputs}


def expected_shapes(model: PairSegModel, n: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
    seg = (n, model.num_classes + 1, h, w)
    proxy = (n, proxy_channels(model.num_classes), h, w)
    return {
        "single": {"out": seg},
        "proxy": {"out": proxy},
        "conjugate": {"seg_a": seg, "seg_b": seg, "proxy": proxy},
        "siamese": {"seg_a": seg, "seg_b": seg},
    }[model.training_form]


def blob_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channels show a noisy copy of their label map (a square), and the labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 24, 24, dtype=torch.int64)
    for i in range(n):
        top, left = torch.randint(0, 14, (2,), generator=g).tolist()
        labels[i, top:top + 9, left:left + 9] = 1
    noise = 0.3 * torch.randn(n, 3, 24, 24, generator=g)
    x = labels.float().unsqueeze(1).expand(-1, 3, -1, -1) + noise
    return x, labels


@pytest.mark.parametrize("arch, options", CASES)
class TestModel:
    """Checks every architecture must pass."""

    def test_forward_backward_odd_size(self, arch, options):
        model = fresh(arch, options)
        xa, xb = images(2, 1), images(2, 2)
        outputs = flat(run(model, xa, xb))
        shapes = {key: tuple(value.shape) for key, value in outputs.items()}
        assert shapes == expected_shapes(model, 2, HEIGHT, WIDTH)
        labels = torch.randint(0, 2, (2, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(3))
        loss = criterion_for(model)(run(model, xa, xb), labels, labels.flip(0))
        loss.backward()
        assert torch.isfinite(loss)
        unused = [name for name, p in model.named_parameters() if p.grad is None]
        assert not unused, f"parameters without gradient (breaks DDP): {unused[:5]}"

    def test_train_and_eval_modes(self, arch, options):
        model = fresh(arch, options)
        xa, xb = images(1, 4), images(1, 5)
        outputs = flat(run(model, xa, xb))  # batch of one trains (no 1x1 batch statistics)
        assert all(torch.isfinite(v).all() for v in outputs.values())
        model.eval()
        with torch.no_grad():
            first, second = flat(run(model, xa, xb)), flat(run(model, xa, xb))
        for key in first:
            assert torch.equal(first[key], second[key])
        assert not any(m.training for m in model.modules())

    def test_same_seed_same_model(self, arch, options):
        torch.manual_seed(7)
        one = build_model(arch, 1, **options).eval()
        torch.manual_seed(7)
        two = build_model(arch, 1, **options).eval()
        for (name, p), q in zip(one.state_dict().items(), two.state_dict().values()):
            assert torch.equal(p, q), name
        xa, xb = images(1, 6), images(1, 7)
        with torch.no_grad():
            for key, value in flat(run(one, xa, xb)).items():
                assert torch.equal(value, flat(run(two, xa, xb))[key])

    def test_state_dict_round_trip(self, arch, options):
        model = fresh(arch, options)
        with torch.no_grad():
            run(model, images(2, 8), images(2, 9))  # move the batch-norm running statistics
        torch.manual_seed(123)
        rebuilt = build_model(model.arch, model.num_classes, model.in_channels, **model.options)
        assert (rebuilt.arch, rebuilt.options, rebuilt.training_form) == (
            model.arch, model.options, model.training_form)
        rebuilt.load_state_dict(model.state_dict())
        model.eval()
        rebuilt.eval()
        xa, xb = images(2, 10), images(2, 11)
        with torch.no_grad():
            expected, actual = flat(run(model, xa, xb)), flat(run(rebuilt, xa, xb))
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)

    def test_overfits_one_batch(self, arch, options):
        model = fresh(arch, options)
        xa, label_a = blob_batch(2, 20)
        xb, label_b = blob_batch(2, 21)
        criterion = criterion_for(model)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(30):
            optimiser.zero_grad()
            loss = criterion(run(model, xa, xb), label_a, label_b)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        assert min(losses[-5:]) < 0.5 * losses[0], losses

    @pytest.mark.parametrize("num_classes", [1, 4])
    def test_predict_proba(self, arch, options, num_classes):
        model = fresh(arch, options, num_classes).eval()
        with torch.no_grad():
            probs = model.predict_proba(images(2, 14))
        assert probs.shape == (2, num_classes, HEIGHT, WIDTH)
        assert probs.min() >= 0 and probs.max() <= 1

    @pytest.mark.parametrize("num_classes", [1, 4])
    def test_predict_proba_reads_identical_pair_with_one_encoder_pass(self, arch, options,
                                                                      num_classes):
        """predict_proba(x) is the training form's read-out of the identical pair (x, x) (Eq. 12
        for C2FCN, one branch for CFCN / SiamFCN), computed with ONE encoder pass over x."""
        model = fresh(arch, options, num_classes).eval()
        x = images(2, 15)
        batches: list[int] = []
        handle = model.encoder.register_forward_hook(
            lambda _module, args, _output: batches.append(args[0].shape[0]))
        with torch.no_grad():
            probs = model.predict_proba(x)
            assert batches == [2], "predict_proba must run the encoder once on the N images"
            handle.remove()
            outputs = model(x) if model.training_form == "single" else model(x, x)
        k = model.num_classes
        if model.training_form == "proxy":
            expected = segmentation_from_proxy(proxy_probabilities(outputs, k), k, model.readout)
        else:
            logits = outputs if model.training_form == "single" else outputs["seg_a"]
            expected = torch.softmax(logits, dim=1)[:, 1:]
        torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, options", PAIRWISE_CASES)
def test_pair_symmetry(arch, options):
    """In eval mode f(a, b) = f(b, a): proxy equal, seg_a and seg_b swapped."""
    model = fresh(arch, options).eval()
    xa, xb = images(2, 12), images(2, 13)
    with torch.no_grad():
        ab, ba = flat(model(xa, xb)), flat(model(xb, xa))
    swapped = {"seg_a": "seg_b", "seg_b": "seg_a"}
    for key, value in ab.items():
        torch.testing.assert_close(ba[swapped.get(key, key)], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch, options", PAIRWISE_CASES)
def test_pairwise_training_runs_encoder_once(arch, options):
    """Both slices of the pairs go through the shared encoder as one batch."""
    model = fresh(arch, options)
    batches: list[int] = []
    model.encoder.register_forward_hook(
        lambda _module, args, _output: batches.append(args[0].shape[0]))
    model(images(2, 16), images(2, 17))
    assert batches == [4]


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_c2fcn_parameter_budget_matches_paper():
    """Paper Sec. 3.2.2: C2FCN on DeepLabv3+/ResNet-18 has 16.60 M parameters, < 0.01 M more
    than its baseline."""
    c2fcn = parameter_count(_cached("c2fcn", (), 1))
    baseline = parameter_count(_cached("deeplabv3plus", (), 1))
    assert abs(c2fcn - 16.60e6) <= 0.005 * 16.60e6, c2fcn
    assert 0 < c2fcn - baseline < 10_000, (c2fcn, baseline)


def test_output_stride_option():
    torch.manual_seed(0)
    for stride in (8, 16):
        model = build_model("deeplabv3plus", 1, output_stride=stride).eval()
        x = images(1, 18, size=(64, 96))
        with torch.no_grad():
            deepest = model.encoder(x)[-1]
            assert deepest.shape[-2:] == (64 // stride, 96 // stride)
            assert model(images(1, 19)).shape == (1, 2, HEIGHT, WIDTH)
    assert build_model("c2fcn", 2, output_stride=16).options["output_stride"] == 16


def test_in_channels_option():
    torch.manual_seed(0)
    model = build_model("unet", 2, in_channels=1, width=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 20, 30)).shape == (1, 3, 20, 30)
    assert model.in_channels == 1


def test_registry_is_consistent():
    assert set(ARCHITECTURES) == set(ENCODER_DECODERS) | set(PAIRWISE_WRAPPERS)  # every row has its builder
    assert {"deeplabv3plus", "unet", "c2fcn", "cfcn", "siamfcn"} <= set(ARCHITECTURES)
    assert set(BASES) <= set(ARCHITECTURES)
    assert {case.values[0] for case in CASES} == set(ARCHITECTURES)
    forms = {arch: build_model(arch, 1, **({"width": 4} if arch == "unet" else {})).training_form
             for arch in ("unet", "c2fcn")}
    assert forms == {"unet": "single", "c2fcn": "proxy"}
    assert default_options("c2fcn")["aggregate"] == "sum"


@pytest.mark.parametrize("arch, num_classes, options, message", [
    ("deeplab", 1, {}, "unknown architecture 'deeplab'"),
    ("unet", 1, {"output_stride": 8}, "'output_stride'"),
    ("c2fcn", 1, {"agregate": "sum"}, "'agregate'"),
    ("c2fcn", 1, {"aggregate": "mean"}, "aggregate"),
    ("cfcn", 1, {"base": "segformer"}, "unknown base 'segformer'"),
    ("deeplabv3plus", 1, {"output_stride": 4}, "output_stride"),
    ("unet", 1, {"width": 0}, "width"),
    ("unet", 0, {}, "num_classes"),
])
def test_bad_arguments_raise_clear_errors(arch, num_classes, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch, num_classes, **options)
