"""The serving seam stays torch-free: `crossan.export.serve` and `from crossan import OnnxRecommender`
load NumPy, onnxruntime, safetensors and faiss only (building and searching a FAISS index too), while
the short API's training names still resolve on first access.

Each import check runs in a fresh interpreter, since this test process has PyTorch loaded already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("torch", "transformers", "triton", "rich")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter from the repository root."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def training_packages_loaded_by(code: str) -> str:
    """Run `code` in a fresh interpreter; the training-only packages it left loaded, comma-separated."""
    report = f"print(','.join(sorted(name for name in {TRAINING_ONLY!r} if name in sys.modules)))\n"
    result = run_python("import sys\n" + code + report)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_serving_imports_load_no_training_packages() -> None:
    loaded = training_packages_loaded_by("import crossan.export.serve\nfrom crossan import OnnxRecommender\n")
    assert loaded == "", f"serving imports loaded {loaded}"


def test_faiss_index_path_loads_no_training_packages(tmp_path: Path) -> None:
    """Saving a table, building, saving, reloading and searching its FAISS index stay torch-free."""
    code = (
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from crossan.export.ann_index import HnswParameters, ann_top_k_rows, open_index\n"
        "from crossan.export.item_table import save_item_table\n"
        "table = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)\n"
        f"path = save_item_table(Path({str(tmp_path)!r}) / 'items.safetensors', table, "
        "[f'i{n}' for n in range(200)], 'test')\n"
        "for _ in range(2):\n"
        "    index = open_index(path, table, HnswParameters())\n"
        "    rows = ann_top_k_rows(index, table[:3], table, [np.array([1]), np.array([2]), np.array([3])], 5)\n"
        "    assert [len(r) for r in rows] == [5, 5, 5]\n"
    )
    loaded = training_packages_loaded_by(code)
    assert loaded == "", f"the FAISS path loaded {loaded}"


def test_short_api_resolves_lazily() -> None:
    code = (
        "import sys\n"
        "import crossan\n"
        "assert 'torch' not in sys.modules, 'import crossan loaded torch'\n"
        "resolved = crossan.create_model\n"
        "assert 'torch' in sys.modules\n"
        "from crossan.zoo.models import create_model\n"
        "assert resolved is create_model\n"
        "assert set(crossan.__all__) <= set(dir(crossan))\n"
        "print('ok')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_unknown_attribute_still_raises() -> None:
    result = run_python("import crossan\ncrossan.no_such_name\n")
    assert result.returncode != 0
    assert "AttributeError: module 'crossan' has no attribute 'no_such_name'" in result.stderr
