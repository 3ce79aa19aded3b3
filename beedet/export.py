"""Export a trained beedet detector to TorchScript or ONNX, for serving without beedet or Python.

    python -m beedet.export ckpt=PATH format=torchscript|onnx [out=PATH] [image_size=[H,W]]

The exported model is the **whole-image** network: one image in, its detections out. Sliced
(tiled) inference (``beedet.inference.tiling``, ``slicing=tiles``) stays in Python: a checkpoint trained on
tiles exports the same per-tile network, and its users cut frames into tiles and merge the tiles'
detections themselves (``beedet.inference.tiling.detect_sliced`` takes any ``detect`` callable; one that maps
a list of crops to ``[dict(zip(("boxes", "scores", "labels"), model(crop))) for crop in crops]``
slices with an exported model). The metadata says how the checkpoint sliced. Test-time flips
(``tta=flips``) stay in Python the same way: wrap that ``detect`` callable in
``beedet.inference.test_time_flips.detect_with_flips``; the exported network predicts one view.

Tensor contract of the exported model (``ExportableDetector``; the same for both formats):

* input ``image``: float32 (3, H, W), RGB, values in [0, 1] (uint8 pixels / 255), any H and W
  (unless exported with a fixed ``image_size``). One image per call, no batch dimension.
* outputs, in this order: ``boxes`` float32 (N, 4) xyxy in pixels of *that input image*;
  ``scores`` float32 (N,), descending; ``labels`` int64 (N,) 0-based class ids (0 is the first
  real class, "bee"; there is no background class). N varies per image, up to the network's
  ``detections_per_img``, and may be 0.

These are exactly the detections ``DetectionModule.detect`` returns for a whole image: every one
above the network's low ``score_thresh`` (mAP needs them all). Counting and display should keep
those with ``score >= score_threshold`` from the metadata, the checkpoint's count threshold (as
``beedet.predict`` does).

Next to ``out`` a sidecar ``<out>.json`` is written (``detector.onnx`` -> ``detector.onnx.json``)
holding ``export_metadata``: class names, the input/output contract, the score threshold, the
network's post-processing settings and the checkpoint's slicing. The same JSON is embedded in the
model file: as the ONNX model's ``metadata_props["beedet"]``, and as the TorchScript archive's
extra file ``beedet.json`` (``torch.jit.load(path, _extra_files={"beedet.json": ""})``).

Exporters, as measured with torch 2.14 / torchvision 0.29: TorchScript is ``torch.jit.script``
(shape-generic; the control flow of SSD's post-processing is kept). ONNX uses the TorchScript-based
(legacy, ``dynamo=False``) exporter at opset >= 11, as torchvision's own ONNX tests do: it traces
one example image and maps ``torchvision::nms`` to ONNX ``NonMaxSuppression``. The torch.export
(dynamo) exporter fails on SSD's post-processing (``batched_nms`` branches on a data-dependent box
count). Tracing records Python ints as constants, so ``ExportableDetector`` never lets the input
size reach one: torchvision's SSD resizes every image to its fixed input size (a constant) and
``ExportableDetector`` scales the boxes back with the input's shape read as a tensor.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
import torchvision
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torchvision.models.detection.ssd import SSD

from beedet.assembly import load_system
from beedet.inference.detections import score_threshold_for
from beedet.training.system import DetectionModule

log = logging.getLogger("beedet.export")

FORMATS = ("torchscript", "onnx")
# File suffix per format.
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
# ONNX NonMaxSuppression needs opset >= 11. 17 (ONNX 1.12, 2022) is old enough for most runtimes;
# the TorchScript-based exporter goes up to 20.
DEFAULT_OPSET = 17
MIN_OPSET = 11
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "labels"]
# Name of the metadata in the TorchScript archive and the ONNX model's metadata_props.
METADATA_KEY = "beedet"


def inference_ssd(net: SSD) -> SSD:
    """A plain torchvision ``SSD`` sharing ``net``'s modules (no copies): the same backbone,
    anchors, head, transform, box coder and post-processing settings, hence the same detections.

    beedet's ``BeeSSD`` differs from torchvision's only in its training loss, whose modules
    TorchScript cannot compile (and an exported model never trains); torchvision's SSD is
    scriptable."""
    if not isinstance(net, SSD):
        raise TypeError(f"expected a torchvision SSD network, got {type(net).__name__}")
    plain = SSD(
        net.backbone,
        net.anchor_generator,
        net.transform.fixed_size,
        net.head.classification_head.num_columns,
        head=net.head,
        score_thresh=net.score_thresh,
        nms_thresh=net.nms_thresh,
        detections_per_img=net.detections_per_img,
        topk_candidates=net.topk_candidates,
        iou_thresh=net.proposal_matcher.high_threshold,
    )
    plain.transform = net.transform
    plain.box_coder = net.box_coder
    return plain.eval()


class ExportableDetector(nn.Module):
    """The whole-image detector with the exported signature: ``forward(image)`` with a float32
    (3, H, W) RGB image in [0, 1] returns ``(boxes (N, 4) xyxy pixels of that image, scores (N,),
    labels (N,) int64 0-based)``; see the module docstring. Holds ``net`` (a torchvision SSD, e.g.
    from :func:`inference_ssd`) in eval mode.

    It runs the steps of torchvision's ``SSD.forward`` in eval mode itself (normalise and resize to
    the fixed input, backbone, head, anchors, post-processing) and then maps the boxes from the
    network input's pixels to the image's, with the same float32 arithmetic as torchvision's
    ``resize_boxes``; so results equal ``DetectionModule.detect`` (whole image) bit for bit in
    eager mode, and the image size stays a tensor when traced for ONNX.
    """

    def __init__(self, net: SSD) -> None:
        super().__init__()
        self.net = net.eval()
        width, height = net.transform.fixed_size
        # (height, width) of the network input, as float32: divisor of the box scale.
        self.register_buffer("input_hw", torch.tensor([float(height), float(width)]), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        torch._assert(image.dim() == 3 and image.shape[0] == 3, "expected one RGB image, float (3, H, W) in [0, 1]")
        images, _ = self.net.transform([image])
        features = list(self.net.backbone(images.tensors).values())
        head_outputs = self.net.head(features)
        anchors = self.net.anchor_generator(images, features)
        detections = self.net.postprocess_detections(head_outputs, anchors, images.image_sizes)[0]
        # (H, W) of the input as a tensor: a traced graph then scales by the size of each image it
        # is given, not by the example's.
        image_hw = torch._shape_as_tensor(image)[1:].to(torch.float32)
        ratio_h, ratio_w = (image_hw / self.input_hw).unbind(0)
        xmin, ymin, xmax, ymax = detections["boxes"].unbind(1)
        boxes = torch.stack((xmin * ratio_w, ymin * ratio_h, xmax * ratio_w, ymax * ratio_h), dim=1)
        # torchvision's labels are 1..C with 0 = background; beedet's class ids are 0-based.
        return boxes, detections["scores"], detections["labels"] - 1


def export_metadata(
    system: DetectionModule, fmt: str, model_file: str, *, image_size: tuple[int, int] | None = None,
    opset: int | None = None, checkpoint: str | None = None,
) -> dict[str, Any]:
    """The JSON that describes an exported model: its tensor contract, class names, the score
    threshold to count with, and where it came from. ``image_size``: (H, W) when the ONNX graph's
    input size is fixed, None when any size is accepted."""
    net = system.net
    width, height = net.transform.fixed_size
    threshold = system.count_threshold
    slicing = None if system.run_config is None else system.run_config.get("slicing")
    flips = system.test_time_flips
    hw: list[int | str] = list(image_size) if image_size is not None else ["height", "width"]
    return {
        "format": fmt,
        "model_file": model_file,
        "checkpoint": checkpoint,
        "class_names": list(system.class_names),
        "input": {
            "name": INPUT_NAMES[0],
            "dtype": "float32",
            "shape": [3, *hw],
            "layout": "CHW, RGB, one image (no batch dimension)",
            "range": [0.0, 1.0],
        },
        "outputs": {
            "boxes": {"dtype": "float32", "shape": ["N", 4], "meaning": "x1, y1, x2, y2 in pixels of the input image"},
            "scores": {"dtype": "float32", "shape": ["N"], "meaning": "confidence, descending"},
            "labels": {"dtype": "int64", "shape": ["N"], "meaning": "0-based index into class_names (no background)"},
        },
        "score_threshold": score_threshold_for(threshold),
        "score_threshold_source": "checkpoint count threshold" if threshold is not None else "fallback (checkpoint has none)",
        "network": {
            "input_size": [height, width],
            "score_thresh": float(net.score_thresh),
            "nms_thresh": float(net.nms_thresh),
            "topk_candidates": int(net.topk_candidates),
            "detections_per_img": int(net.detections_per_img),
        },
        "whole_image": True,
        # The checkpoint's sliced-inference settings (null: whole frames). The exported graph is
        # the whole-image network either way; slicing is done by the caller (beedet.inference.tiling).
        "checkpoint_slicing": slicing or None,
        # The checkpoint's test-time flips (null: none). The graph is one view; score_threshold was
        # chosen on the views' vote when this is set (beedet.inference.test_time_flips).
        "checkpoint_test_time_flips": None if flips is None else {"views": list(flips.views), "iou_thresh": flips.iou_thresh},
        "onnx_opset": opset,
        "exported_with": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }


def export_torchscript(detector: ExportableDetector, path: Path, metadata: dict[str, Any]) -> Path:
    """Script ``detector`` and save it at ``path`` with ``metadata`` as the archive's extra file
    ``beedet.json``."""
    with warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated (FutureWarning) yet it is the format asked for;
        # and torchvision's scripted SSD warns that it returns (losses, detections), which
        # ExportableDetector does not use.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", message="SSD always returns a")
        scripted = torch.jit.script(detector)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    return path


def export_onnx(
    detector: ExportableDetector, path: Path, metadata: dict[str, Any], *,
    image_size: tuple[int, int] | None = None, opset: int = DEFAULT_OPSET,
) -> Path:
    """Trace ``detector`` into an ONNX graph at ``path`` (TorchScript-based exporter; see the
    module docstring) with ``metadata`` in ``metadata_props["beedet"]``. ``image_size`` (H, W)
    fixes the input size (for runtimes that want static shapes); None: any H and W, traced on an
    example of the network's input size."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (ONNX NonMaxSuppression), got {opset}")
    # onnx comes with beedet's `export` extra; TorchScript export does not need it.
    import onnx
    width, height = detector.net.transform.fixed_size
    example_hw = image_size if image_size is not None else (height, width)
    example = torch.rand(3, *example_hw, generator=torch.Generator().manual_seed(0))
    dynamic_axes: dict[str, dict[int, str]] = {name: {0: "num_detections"} for name in OUTPUT_NAMES}
    if image_size is None:
        dynamic_axes[INPUT_NAMES[0]] = {1: "height", 2: "width"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns wherever torchvision turns a size into a constant: each is the network's
        # fixed input size, the same for every image (the parity tests check this). And the
        # TorchScript-based exporter warns that it is not the default one (see the module docstring).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", module=r"torchvision\.ops")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            detector, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_axes=dynamic_axes,
        )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export_checkpoint(
    ckpt: str | Path, fmt: str, out: str | Path, *, image_size: int | Sequence[int] | None = None, opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export the checkpoint ``ckpt`` (a beedet checkpoint, ``beedet.assembly.load_system``) as
    ``fmt`` ("torchscript" or "onnx") to ``out``, and its metadata to ``<out>.json``. Returns the
    metadata. ``image_size`` (H, W) applies to ONNX only (see :func:`export_onnx`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if image_size is not None:
        if fmt != "onnx":
            raise ValueError("image_size fixes the ONNX input size; a TorchScript model accepts any size")
        image_size = _height_width(image_size)
    out = Path(out)
    system, _ = load_system(ckpt)
    detector = ExportableDetector(inference_ssd(system.net))
    metadata = export_metadata(
        system, fmt, out.name, image_size=image_size, opset=opset if fmt == "onnx" else None, checkpoint=str(Path(ckpt).resolve())
    )
    if metadata["checkpoint_slicing"]:
        log.warning("%s predicts frames as tiles (slicing); the exported model is the whole-image network: "
                    "slice frames before calling it (beedet.inference.tiling)", ckpt)
    if metadata["checkpoint_test_time_flips"]:
        log.warning("%s predicts with test-time flips %s, and its score_threshold %.2f was chosen on their vote; the "
                    "exported model is one view: wrap it (beedet.inference.test_time_flips.detect_with_flips) or choose "
                    "a threshold for its own scores", ckpt, metadata["checkpoint_test_time_flips"]["views"],
                    metadata["score_threshold"])
    start = time.perf_counter()
    if fmt == "torchscript":
        export_torchscript(detector, out, metadata)
    else:
        export_onnx(detector, out, metadata, image_size=image_size, opset=opset)
    log.info("exported %s in %.1f s", out, time.perf_counter() - start)
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(metadata, indent=1))
    return metadata


def _height_width(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from ``[H, W]`` or one int (a square)."""
    sides = [image_size] if isinstance(image_size, int) else list(image_size)
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or not all(isinstance(v, int) and v >= 1 for v in sides):
        raise ValueError(f"image_size must be [height, width] in pixels or one int, got {image_size!r}")
    return sides[0], sides[1]


@hydra.main(config_path="../conf", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    out = Path(cfg.out) if cfg.out else run_dir / f"detector{SUFFIXES[cfg.format]}"
    image_size = OmegaConf.to_container(cfg.image_size) if isinstance(cfg.image_size, ListConfig) else cfg.image_size
    export_checkpoint(cfg.ckpt, cfg.format, out, image_size=image_size, opset=cfg.opset)
    print(f"exported: {out}")
    print(f"metadata: {out.with_name(out.name + '.json')}")
    print(f"run dir: {run_dir}")


if __name__ == "__main__":
    main()
