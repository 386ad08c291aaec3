"""The runtime imports where torch cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, _Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_runtime_and_configs_import_without_torch() -> None:
    res = _run(
        """
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable: the block does not work")
        import egovlpv2_edge
        import egovlpv2_edge.runtime
        from egovlpv2_edge import get_config, list_models
        cfg = get_config("egovlpv2_edge")
        assert cfg.video.num_frames == 4 and "egovlpv2_base" in list_models()
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_model_import_fails_clearly_without_torch() -> None:
    res = _run(
        """
        import egovlpv2_edge
        try:
            egovlpv2_edge.create_model("egovlpv2_test")
        except ImportError as exc:
            print("ImportError", exc)
        """
    )
    assert "ImportError" in res.stdout and "torch" in res.stdout
