"""The test preset's dual encoders export with torch.onnx.export and match ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .helpers import random_inputs

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class _Video(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.encode_video(frames)


class _Text(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


def _export(module, args, names, dyn, path) -> ort.InferenceSession:
    prog = torch.onnx.export(
        module.eval(),
        args,
        input_names=names,
        output_names=[f"{path.stem}_embedding"],
        dynamic_shapes=dyn,
        opset_version=18,
    )
    prog.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_encoders_export_and_match_onnxruntime(tiny, tmp_path) -> None:
    from .helpers import randomize_gates

    randomize_gates(tiny)  # gates must not matter in dual mode
    frames, ids, mask = random_inputs(tiny, batch=2, seed=1)
    batch = torch.export.Dim("batch", min=1, max=64)
    video = _export(_Video(tiny), (frames,), ["frames"], {"frames": {0: batch}}, tmp_path / "video.onnx")
    text = _export(
        _Text(tiny),
        (ids, mask),
        ["input_ids", "attention_mask"],
        {"input_ids": {0: batch}, "attention_mask": {0: batch}},
        tmp_path / "text.onnx",
    )
    # fresh inputs with another batch size
    frames, ids, mask = random_inputs(tiny, batch=3, seed=2)
    with torch.no_grad():
        ref_v = tiny.encode_video(frames).numpy()
        ref_t = tiny.encode_text(ids, mask).numpy()
    out_v = video.run(None, {"frames": frames.numpy()})[0]
    out_t = text.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert out_v.shape == ref_v.shape and out_t.shape == ref_t.shape
    assert np.abs(out_v - ref_v).max() < 1e-4
    assert np.abs(out_t - ref_t).max() < 1e-4
