"""TorchScript and ONNX export (beedet.export): the exported model gives the detections of
``DetectionModule.detect`` on whole images (0-based labels, boxes in the input image's pixels),
and the CLI writes the model with its metadata.

Two synthetic bee frames: one at the network's input size and one of another size and aspect
(so the exported graph must resize it and scale boxes back by *that* image's size, not the size
it was traced with). TorchScript runs torch's own kernels and must agree to 1e-4. onnxruntime has
its own convolution and resize kernels: measured differences on these frames are below 2e-4 px
and 1e-5 in score, so boxes are compared at 1e-3 px and scores at 1e-4. Detections are paired by
label, box and score rather than by position: two scores that differ by less than the tolerance
may come out in either order, and when the network's detection cap cuts between them either may
be the one kept, so only detections within the tolerance of the lowest kept score may go unpaired.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from beedet.assembly import load_system
from beedet.data.synthetic import draw_image, image_rng
from beedet.export import export_checkpoint
from helpers import run_script


def frames(input_size: int) -> list[torch.Tensor]:
    """Float (3, H, W) synthetic bee frames: input_size x input_size, and 300 x 420."""
    square, _, _ = draw_image(image_rng(11, "export", 0), input_size)
    wide, _, _ = draw_image(image_rng(11, "export", 1), 420)
    return [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255) for img in (square, wide[:300])]


def assert_same_detections(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], box_atol: float, score_atol: float) -> None:
    """Every detection of ``want`` has one in ``got`` with its label, box within ``box_atol`` px and
    score within ``score_atol``; the counts are equal; see the module docstring for the cut-off."""
    n = len(want["scores"])
    assert len(got["scores"]) == n, f"{len(got['scores'])} detections, eager gives {n}"
    assert got["boxes"].shape == (n, 4) and got["labels"].dtype == torch.int64
    assert bool((got["scores"][1:] <= got["scores"][:-1]).all()), "scores must come out in descending order"
    used = torch.zeros(n, dtype=torch.bool)
    unpaired = []
    for i in range(n):
        box_err = (got["boxes"] - want["boxes"][i]).abs().amax(dim=1)
        score_err = (got["scores"] - want["scores"][i]).abs()
        fits = ~used & (got["labels"] == want["labels"][i]) & (box_err <= box_atol) & (score_err <= score_atol)
        if fits.any():
            j = torch.where(fits)[0][score_err[fits].argmin()]
            used[j] = True
        else:
            unpaired.append(i)
    if n:
        cut_off = float(want["scores"].min()) + score_atol
        stray = [i for i in unpaired if float(want["scores"][i]) > cut_off]
        assert not stray, f"{len(stray)} of {n} detections have no counterpart, e.g. {want['boxes'][stray[0]].tolist()}"


@pytest.fixture(scope="module")
def eager(tiny_checkpoint):
    """(the trained system, its frames, detect's output per frame)."""
    system, _ = load_system(tiny_checkpoint)
    images = frames(int(system.net.transform.fixed_size[0]))
    return system, images, system.detect(images)


@pytest.fixture(scope="module")
def torchscript_cli_export(tiny_checkpoint, tmp_path_factory):
    """``python -m beedet.export ckpt=... format=torchscript``, as a user runs it: (model path, stdout)."""
    proc, run_dir = run_script(["beedet.export", f"ckpt={tiny_checkpoint}", "format=torchscript"], tmp_path_factory.mktemp("export"))
    return run_dir / "detector.pt", proc.stdout


@pytest.mark.slow
def test_torchscript_matches_detect(torchscript_cli_export, eager):
    _, images, expected = eager
    path, _ = torchscript_cli_export
    model = torch.jit.load(str(path))
    for image, want in zip(images, expected):
        boxes, scores, labels = model(image)
        assert_same_detections({"boxes": boxes, "scores": scores, "labels": labels}, want, box_atol=1e-4, score_atol=1e-4)
    assert len(expected[0]["scores"]) > 0, "the test frames should give detections to compare"


@pytest.mark.slow
def test_cli_writes_model_and_metadata(torchscript_cli_export, eager, tiny_checkpoint):
    system, _, _ = eager
    path, stdout = torchscript_cli_export
    sidecar = path.with_name("detector.pt.json")
    assert f"exported: {path}" in stdout and sidecar.is_file()
    metadata = json.loads(sidecar.read_text())
    assert metadata["format"] == "torchscript" and metadata["model_file"] == "detector.pt"
    assert metadata["class_names"] == system.class_names
    assert metadata["score_threshold"] == pytest.approx(system.count_threshold)
    assert metadata["input"]["shape"] == [3, "height", "width"] and metadata["input"]["range"] == [0.0, 1.0]
    assert list(metadata["outputs"]) == ["boxes", "scores", "labels"]
    assert metadata["network"]["detections_per_img"] == system.net.detections_per_img
    assert metadata["checkpoint"] == str(tiny_checkpoint.resolve())
    assert metadata["checkpoint_test_time_flips"] is None  # trained without; the recipe's would list its views
    # The same JSON travels inside the model file.
    extra = {"beedet.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["beedet.json"]) == metadata


@pytest.mark.slow
def test_onnx_matches_detect(tiny_checkpoint, eager, tmp_path):
    _, images, expected = eager
    path = tmp_path / "detector.onnx"
    metadata = export_checkpoint(tiny_checkpoint, "onnx", path)
    assert json.loads(path.with_name("detector.onnx.json").read_text()) == metadata
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["beedet"]) == metadata

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "image" and image_input.shape == [3, "height", "width"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    for image, want in zip(images, expected):
        boxes, scores, labels = (torch.from_numpy(a) for a in session.run(None, {"image": image.numpy()}))
        assert_same_detections({"boxes": boxes, "scores": scores, "labels": labels}, want, box_atol=1e-3, score_atol=1e-4)


@pytest.mark.slow
def test_onnx_fixed_image_size(tiny_checkpoint, eager, tmp_path):
    """image_size=[H, W] fixes the graph's input shape; boxes are still that image's pixels."""
    _, images, expected = eager
    out = tmp_path / "fixed.onnx"
    metadata = export_checkpoint(tiny_checkpoint, "onnx", out, image_size=[300, 420])
    assert metadata["input"]["shape"] == [3, 300, 420]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [3, 300, 420]
    boxes, scores, labels = (torch.from_numpy(a) for a in session.run(None, {"image": images[1].numpy()}))
    assert_same_detections({"boxes": boxes, "scores": scores, "labels": labels}, expected[1], box_atol=1e-3, score_atol=1e-4)
    with pytest.raises(ValueError, match="TorchScript model accepts any size"):
        export_checkpoint(tiny_checkpoint, "torchscript", tmp_path / "x.pt", image_size=[300, 420])
