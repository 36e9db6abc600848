"""The pure core never imports dagster (so it is usable from a plain script)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import jrr_pipeline.ml


def test_ml_never_imports_dagster():
    modules = [m.name for m in pkgutil.walk_packages(jrr_pipeline.ml.__path__, "jrr_pipeline.ml.")]
    assert len(modules) >= 5
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    if name.endswith('__main__'): continue\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
        "print(len(bad))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
