"""pairseg.infer: label maps in the input's own geometry, batching, probabilities, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from pairseg.data import intensity_window, normalize, stacks_25d
from pairseg.orientation import Orientation
from pairseg.errors import PairSegInputError
from pairseg.devices import bf16_supported
from pairseg.infer import (Predictor, inference_memory_format, list_inputs, predict_volume,
                           resolve_device)
from pairseg.io.read import read_volume
from pairseg.io.volume import Volume
from pairseg.io.write import write_volume
from pairseg.modelfiles.weights import save_model
from pairseg.networks import build_model
from pairseg.postprocess import keep_largest_component
from pairseg.proxy import decode_labels

CLASSES = ["liver", "spleen"]
COLORS = [[0.9, 0.5, 0.4], [0.6, 0.4, 0.6]]


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """An untrained (random) tiny C2FCN: plumbing only; its output is arbitrary but fixed."""
    torch.manual_seed(0)
    model = build_model("c2fcn", 2, 3, base="unet", width=4)
    meta = {"class_names": CLASSES, "class_colors": COLORS, "modality": "MR", "size": 32}
    return save_model(tmp_path_factory.mktemp("model") / "tiny.pairseg", model, meta)


def _oblique(shape=(7, 40, 56)) -> Volume:
    rng = np.random.default_rng(4)
    array = rng.normal(100.0, 30.0, shape).astype(np.float32)
    array[:, 10:30, 15:40] += 200.0  # a bright block for the model to notice
    angle = np.radians(25.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    tilt = np.array([[1.0, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    direction = rotation @ tilt @ np.diag([1.0, -1.0, 1.0])  # oblique, with a flipped y axis
    return Volume(array, (0.7, 1.3, 4.5), (-12.5, 40.0, 7.25), tuple(direction.ravel()))


def test_output_in_input_geometry(untrained_model, tmp_path):
    source = tmp_path / "oblique.nrrd"
    write_volume(source, _oblique())
    predictor = Predictor(untrained_model, "cpu")
    outputs = predictor.segment_file(source, tmp_path / "out.nii.gz")
    assert outputs == [tmp_path / "out.nii.gz"]
    image, labels = sitk.ReadImage(str(source)), sitk.ReadImage(str(outputs[0]))
    assert labels.GetSize() == image.GetSize() == (56, 40, 7)
    np.testing.assert_allclose(labels.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), image.GetDirection(), atol=1e-5)
    values = sitk.GetArrayFromImage(labels)
    assert values.dtype == np.uint8 and values.max() <= 2


def test_seg_nrrd_carries_class_names_and_colours(untrained_model, tmp_path):
    source = tmp_path / "oblique.nii.gz"
    write_volume(source, _oblique())
    Predictor(untrained_model, "cpu").segment_file(source, tmp_path / "out.seg.nrrd")
    seg = slicerio.read_segmentation(str(tmp_path / "out.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == CLASSES
    for segment, color in zip(seg["segments"], COLORS):
        np.testing.assert_allclose(segment["color"], color, atol=1e-3)
    np.testing.assert_allclose(seg["ijkToLPS"], read_volume(source).ijk_to_lps(), atol=1e-4)


def test_largest_component_by_default(untrained_model):
    predictor = Predictor(untrained_model, "cpu")
    volume = _oblique()
    raw = predictor.segment(volume, keep_largest=False).labels.array
    default = predictor.segment(volume).labels.array
    np.testing.assert_array_equal(default, keep_largest_component(raw, 2))


def test_result_independent_of_batch_size(untrained_model):
    volume = _oblique(shape=(9, 40, 56))
    results = [Predictor(untrained_model, "cpu", batch_size=b).segment(volume, keep_probabilities=True)
               for b in (1, 4, 16)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.labels.array, results[0].labels.array)
        np.testing.assert_allclose(other.probabilities.astype(np.float32),
                                   results[0].probabilities.astype(np.float32), atol=2e-3)


def test_probabilities_file_consistent_with_labels(untrained_model, tmp_path):
    source = tmp_path / "in.nii.gz"
    write_volume(source, _oblique())
    predictor = Predictor(untrained_model, "cpu")
    predictor.segment_file(source, tmp_path / "labels.nii.gz", probabilities_path=tmp_path / "probs.nii.gz",
                           keep_largest=False)
    probs_image = sitk.ReadImage(str(tmp_path / "probs.nii.gz"))
    assert probs_image.GetNumberOfComponentsPerPixel() == 2
    assert probs_image.GetSize() == (56, 40, 7)
    np.testing.assert_allclose(probs_image.GetDirection(), sitk.ReadImage(str(source)).GetDirection(), atol=1e-5)
    probs = sitk.GetArrayFromImage(probs_image)  # z, y, x, K
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    decoded = decode_labels(torch.from_numpy(np.moveaxis(probs, -1, 1).astype(np.float32))).numpy()
    # Away from exact ties (float16 storage), the labels are the decoded probabilities.
    top = np.sort(probs, axis=-1)
    clear = (np.abs(top[..., -1] - 0.5) > 2e-3) & (top[..., -1] - top[..., -2] > 2e-3)
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(labels[clear], decoded[clear])


def test_predict_volume_native_grid_and_progress():
    model = build_model("unet", 3, 3, width=4)
    seen = []
    labels, probs = predict_volume(model, np.random.rand(5, 40, 56).astype(np.float32), 32, torch.device("cpu"),
                                   batch_size=2, keep_probabilities=True,
                                   events=lambda name, **f: seen.append(f["step"]))
    assert labels.shape == (5, 40, 56) and labels.dtype == np.uint8
    assert probs.shape == (5, 3, 40, 56) and probs.dtype == np.float16
    assert seen == [2, 4, 5]


def test_check_request_and_bad_images(untrained_model, tmp_path):
    predictor = Predictor(untrained_model, "cpu")
    assert predictor.class_names == CLASSES
    predictor.check_request("mr", ["Liver", "Spleen"])
    with pytest.raises(PairSegInputError, match="trained on MR"):
        predictor.check_request("CT")
    with pytest.raises(PairSegInputError, match="classes"):
        predictor.check_request(None, ["liver"])
    flat = Volume(np.full((5, 20, 20), 3.0, np.float32))
    write_volume(tmp_path / "flat.nii.gz", flat)
    with pytest.raises(PairSegInputError, match="flat.nii.gz.*constant"):
        predictor.segment_file(tmp_path / "flat.nii.gz", tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


def test_resolve_device_and_list_inputs(tmp_path):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(PairSegInputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(PairSegInputError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(PairSegInputError, match="does not exist"):
        list_inputs(tmp_path / "nothing")
    for name in ("b.nii.gz", "a.nrrd", "c.seg.nrrd", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_inputs(tmp_path)] == ["a.nrrd", "b.nii.gz"]
    assert list_inputs(tmp_path / "a.nrrd") == [tmp_path / "a.nrrd"]


class _NeighbourEcho(torch.nn.Module):
    """A stand-in network whose class probabilities are its three input channels (slices z-1, z,
    z+1), voxel by voxel: labels then show which slices each 2.5D stack was cut from."""

    num_classes = 3

    def predict_proba(self, x):
        return x


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_predict_volume_normalises_each_batch_with_the_window(batch_size):
    rng = np.random.default_rng(batch_size)
    volume = Volume(rng.normal(100.0, 40.0, (7, 12, 12)).astype(np.float32),
                    direction=(1, 0, 0, 0, -1, 0, 0, 0, -1))  # flipped y and z: a strided view
    orientation = Orientation.of(volume.direction)
    canonical = orientation.apply(volume.array)
    assert not canonical.flags.c_contiguous
    raw = volume.array.copy()
    normalized = np.ascontiguousarray(orientation.apply(normalize(volume.array, "MR")))
    expected = decode_labels(stacks_25d(torch.from_numpy(normalized))).numpy()
    seen = []
    lazy, lazy_probs = predict_volume(_NeighbourEcho(), canonical, 12, torch.device("cpu"),
                                      window=intensity_window(volume.array, "MR"), batch_size=batch_size,
                                      keep_probabilities=True, events=lambda name, **f: seen.append(f["step"]))
    eager, eager_probs = predict_volume(_NeighbourEcho(), normalized, 12, torch.device("cpu"),
                                        batch_size=batch_size, keep_probabilities=True)
    np.testing.assert_array_equal(lazy, expected)
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(lazy_probs, eager_probs)
    assert seen[-1] == 7 and len(seen) == -(-7 // batch_size)
    np.testing.assert_array_equal(volume.array, raw)  # normalised batches are copies


def test_cpu_inference_runs_channels_last(untrained_model):
    """On the CPU the weights and each input batch are NHWC (oneDNN's faster layout)."""
    cpu = torch.device("cpu")
    assert inference_memory_format(cpu) == torch.channels_last
    assert inference_memory_format(torch.device("cuda")) == torch.contiguous_format
    predictor = Predictor(untrained_model, "cpu")
    convs = [m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    layouts = []

    class LayoutRecorder(_NeighbourEcho):
        def predict_proba(self, x):
            layouts.append(x.is_contiguous(memory_format=torch.channels_last))
            return x

    predict_volume(LayoutRecorder(), np.random.rand(5, 16, 16).astype(np.float32), 16, cpu, batch_size=2)
    assert layouts == [True, True, True]


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16 path")
def test_bf16_precision_runs_bfloat16_and_agrees_with_fp32(phantom_model, phantom_dir):
    """--precision bf16: the convolutions really run in bfloat16 and the probabilities stay close to
    fp32's (the Dice cost on real data is measured in benchmarks/results/dice_cost.json)."""
    volume = read_volume(sorted(phantom_dir.glob("*_image.nii.gz"))[0])
    fp32 = Predictor(phantom_model, "cpu", precision="fp32").segment(volume, keep_largest=False, keep_probabilities=True)
    predictor = Predictor(phantom_model, "cpu", precision="bf16")
    dtypes = []
    first_conv = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    bf16 = predictor.segment(volume, keep_largest=False, keep_probabilities=True)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert bf16.labels.array.shape == fp32.labels.array.shape
    difference = np.abs(bf16.probabilities.astype(np.float32) - fp32.probabilities.astype(np.float32))
    assert difference.mean() < 0.005 and np.percentile(difference, 99) < 0.05


def test_auto_precision_is_bf16_only_where_native(untrained_model, monkeypatch):
    """The default precision "auto" runs bf16 where the CPU has a native bfloat16 path and fp32
    elsewhere (never refused); an explicit fp32 stays fp32."""
    native = bf16_supported(torch.device("cpu"))
    assert Predictor(untrained_model, "cpu").precision == ("bf16" if native else "fp32")
    assert Predictor(untrained_model, "cpu", precision="fp32").precision == "fp32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert Predictor(untrained_model, "cpu").precision == "fp32"


def test_precision_refused_where_unsupported(untrained_model, monkeypatch):
    with pytest.raises(PairSegInputError, match="unknown precision 'fp8'"):
        Predictor(untrained_model, "cpu", precision="fp8")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(PairSegInputError, match="bf16 is not supported on this cpu device"):
        Predictor(untrained_model, "cpu", precision="bf16")


class _CentreEcho(torch.nn.Module):
    """Stand-in one-class network: the probability is the centre slice of the 2.5D stack; it
    records the shapes it is given."""

    num_classes = 1

    def __init__(self):
        super().__init__()
        self.shapes = []

    def predict_proba(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        return x[:, 1:2]


def _disk_volume(spacing_xy, radius_mm=20.0, shape=(3, 80, 60)):
    """A disk of ``radius_mm`` (physical) centred in each slice, on pixels of ``spacing_xy`` mm."""
    depth, rows, cols = shape
    y = (np.arange(rows) - (rows - 1) / 2) * spacing_xy[1]
    x = (np.arange(cols) - (cols - 1) / 2) * spacing_xy[0]
    disk = (y[:, None] ** 2 + x[None, :] ** 2 <= radius_mm ** 2).astype(np.float32)
    return Volume(np.repeat(disk[None], depth, axis=0), (spacing_xy[0], spacing_xy[1], 5.0))


def test_anisotropic_pixels_are_resampled_to_the_model_spacing_and_back():
    """0.6 x 1.2 mm pixels at a 1.5 mm model: the network gets the physical extent at 1.5 mm
    (here smaller than the training size, so centred on it), and the labels come back on the
    native grid where the disk is."""
    from pairseg.infer import predict_native

    volume = _disk_volume((0.6, 1.2))
    model = _CentreEcho()
    labels, _ = predict_native(model, volume, "MR", 64, torch.device("cpu"), model_spacing=1.5)
    assert set(model.shapes) == {(64, 64)}  # rows 80*1.2/1.5 = 64, columns 60*0.6/1.5 = 24, centred on 64 x 64
    truth = volume.array > 0.5
    overlap = np.logical_and(labels == 1, truth).sum() / np.logical_or(labels == 1, truth).sum()
    assert overlap > 0.95
    wide = _disk_volume((0.6, 1.2), shape=(3, 160, 300))  # 192 x 180 mm: larger than 64 px of 1.5 mm
    model.shapes.clear()
    labels, _ = predict_native(model, wide, "MR", 64, torch.device("cpu"), model_spacing=1.5)
    assert set(model.shapes) == {(128, 128)}  # 128 x 120 resampled, run whole, padded to a multiple of 32
    truth = wide.array > 0.5
    assert np.logical_and(labels == 1, truth).sum() / np.logical_or(labels == 1, truth).sum() > 0.95


def test_very_large_slices_go_through_training_size_windows():
    from pairseg.infer import predict_volume, tile_starts

    assert tile_starts(64, 64) == [0] and tile_starts(200, 64) == [0, 23, 45, 68, 91, 113, 136]  # odd count: one centred
    assert all(b - a <= 32 for a, b in zip(tile_starts(200, 64), tile_starts(200, 64)[1:]))
    model = _CentreEcho()
    array = np.random.default_rng(0).random((2, 300, 300)).astype(np.float32)
    labels, probs = predict_volume(model, array, 64, torch.device("cpu"), keep_probabilities=True,
                                   spacing=(1.0, 1.0), model_spacing=1.0)
    assert set(model.shapes) == {(64, 64)}  # 300 px > 2 x 64: windows, memory of one window batch
    np.testing.assert_allclose(probs[:, 0], array, atol=2e-3)  # blended windows of an echo = the input


@pytest.mark.parametrize("capability, archs, supported", [
    ((8, 6), ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_90"], True),    # sm_80 binary runs on 8.6
    ((12, 0), ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], False),  # Blackwell, older torch
    ((12, 0), ["sm_75", "sm_80", "sm_90", "compute_90"], True),                # PTX compiled by the driver
    ((3, 5), ["sm_50", "sm_60", "compute_50"], False),                          # Kepler: too old
    ((9, 0), ["sm_80", "sm_90a"], True),
    ((10, 0), ["sm_80", "sm_90a"], False),
    ((7, 5), [], True),                                                         # unknown: not refused
])
def test_cuda_arch_supported(capability, archs, supported):
    """Issue 19 item 13: a GPU that the installed torch cannot run is detected before any kernel runs."""
    from pairseg.devices import cuda_arch_supported

    assert cuda_arch_supported(capability, archs) is supported


def test_auto_device_falls_back_to_cpu_on_an_unsupported_gpu(monkeypatch, capsys):
    """A CUDA GPU this torch build has no kernels for: 'auto' runs on the CPU and says why (stderr, the
    line the Slicer module shows); 'cuda' is a clear input error, never a crash inside a kernel."""
    from pairseg import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (12, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_90"])
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    warning = capsys.readouterr().err
    assert warning.startswith(devices.WARNING_PREFIX + "the GPU Test GPU (compute capability 12.0) is not supported")
    assert "running on the CPU instead" in warning
    with pytest.raises(PairSegInputError, match="compute capability 12.0.*choose the CPU"):
        resolve_device("cuda")
    with pytest.raises(PairSegInputError, match="sees 1 CUDA GPU"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_90", "sm_120"])
    assert resolve_device("auto").type == "cuda" and resolve_device("cuda:0").type == "cuda"
