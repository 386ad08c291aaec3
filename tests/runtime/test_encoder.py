"""The runtime's ONNX Runtime encoders over a real package equal PyTorch, and answer a query without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.runtime._package import SENTENCES

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def built(exported, package) -> tuple[Path, object, object]:
    return package, exported[1], exported[2]


def test_encoder_equals_pytorch_in_both_gate_states(built) -> None:
    from egovlpv2_edge.package import open_package
    from egovlpv2_edge.runtime.encoder import PackageEncoder

    pkg, model, tok = built
    enc = PackageEncoder(open_package(pkg))
    v = model.cfg.video
    frames = np.random.default_rng(0).standard_normal((3, v.num_frames, 3, v.img_size, v.img_size)).astype(np.float32)
    out = enc.encode_clips(frames)
    x = torch.from_numpy(frames)
    b = tok.encode([SENTENCES[0]], max_length=model.cfg.text.max_length)
    ids, mask = torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)
    with torch.no_grad():
        ref_v = model.encode_video(x, normalize=True).numpy()
        ref_t = model.encode_text(ids, mask, normalize=True).numpy()
        vtm = model.forward_fusion(x, ids.repeat(3, 1), mask.repeat(3, 1)).vtm_logits
    assert np.abs(out.embeddings - ref_v).max() < 1e-4
    assert np.abs(enc.encode_texts([SENTENCES[0]]) - ref_t).max() < 1e-4
    assert np.abs(enc.match(out.tokens, SENTENCES[0]) - torch.softmax(vtm, -1)[:, 1].numpy()).max() < 1e-4
    assert set(enc.providers.values()) == {"CPUExecutionProvider"}


def test_fused_pairs_batch_equals_one_text_at_a_time(built) -> None:
    """Every (text, clip) pair in one fused call gives what one call per text gives, choice-major."""
    from egovlpv2_edge.package import open_package
    from egovlpv2_edge.runtime.encoder import PackageEncoder

    pkg, model, _ = built
    enc = PackageEncoder(open_package(pkg))
    v = model.cfg.video
    frames = np.random.default_rng(1).standard_normal((2, v.num_frames, 3, v.img_size, v.img_size)).astype(np.float32)
    tokens = enc.encode_clips(frames).tokens
    texts = [SENTENCES[0], SENTENCES[1], "a much longer question about what the wearer did right after that"]
    calls = []
    run = enc._run
    enc._run = lambda graph, feeds: calls.append(graph) or run(graph, feeds)  # type: ignore[method-assign]
    together = enc.fused_pairs(tokens, texts)["vtm_logits"]
    assert calls == ["text_lower", "fused_upper"]
    one_by_one = np.concatenate([enc.fused(tokens, t)["vtm_logits"] for t in texts])
    assert together.shape == (len(texts) * 2, 2)
    assert np.abs(together - one_by_one).max() < 1e-4


def test_text_encodings_are_cached_and_bad_queries_rejected(built) -> None:
    from egovlpv2_edge.package import open_package
    from egovlpv2_edge.runtime.encoder import PackageEncoder

    enc = PackageEncoder(open_package(built[0]), text_cache=2)
    calls = []
    run = enc._run
    enc._run = lambda graph, feeds: calls.append(graph) or run(graph, feeds)  # type: ignore[method-assign]
    enc.encode_texts([SENTENCES[1]])
    enc.encode_texts([SENTENCES[1]])
    assert calls == ["text_lower", "text_upper"]
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="non-empty"):
            enc.encode_texts([bad])
    with pytest.raises(ValueError, match="unknown execution provider"):
        PackageEncoder(enc.package, providers=["NoSuchExecutionProvider"])


def test_runtime_answers_a_query_with_torch_unimportable(built, tmp_path) -> None:
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, _Block())
        import numpy as np
        from egovlpv2_edge.package import open_package
        from egovlpv2_edge.runtime.encoder import PackageEncoder
        from egovlpv2_edge.runtime.index import ClipIndex
        pkg = open_package({str(built[0])!r})
        enc = PackageEncoder(pkg)
        pre = pkg.preprocessing
        frames = np.random.default_rng(1).standard_normal((4, pre.frames_per_clip, 3, pre.img_size, pre.img_size))
        clips = enc.encode_clips(frames.astype(np.float32))
        with ClipIndex.open({str(tmp_path / "index")!r}, clips.embeddings.shape[1]) as index:
            ids = index.add(clips.embeddings, [0, 2, 4, 6], [2, 4, 6, 8], "cam0", tokens=list(clips.tokens))
            hits = index.search(enc.encode_texts(["#C C opens the red box"])[0], k=2)[0]
            tokens = index.get_tokens([h.id for h in hits])
            p = enc.match(np.stack([tokens[h.id] for h in hits]).astype(np.float32), "#C C opens the red box")
        assert len(hits) == 2 and p.shape == (2,) and np.all((p >= 0) & (p <= 1))
        assert "torch" not in sys.modules
        print("answered", [h.id for h in hits], p.round(3).tolist())
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("answered")
