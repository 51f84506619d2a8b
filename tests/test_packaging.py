"""Surety's import names are its own: one root, `surety_serving`, that no other distribution
provides, resolving into this checkout; a wheel with nothing else at its top level; the kit
(`surety_kit`, for tests, benchmarks and load tests) in the checkout's virtualenv only; and
Hugging Face's
`kernels` (which transformers ≥ 5.25 imports) living beside it in one process.

The collision these guard against: the op library's loader was once a top-level `kernels`
package, which shadowed Hugging Face's and stopped every transformers model from loading."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: Wheel path → source folder, as the build maps them (pyproject.toml, tool.scikit-build).
PACKAGES: dict[str, str] = PYPROJECT["tool"]["scikit-build"]["wheel"]["packages"]
#: The kit's folder: `make build` puts it on the virtualenv's import path (a .pth file), not the
#: wheel.
KIT = REPO / "kit"
#: The top-level names the wheel installs, the checkout's test package, and the kit.
OUR_NAMES = {path.split("/")[0] for path in PACKAGES} | {"tests", "surety_kit"}


def test_the_wheel_maps_everything_under_one_root():
    assert {path.split("/")[0] for path in PACKAGES} == {"surety_serving"}


@pytest.mark.parametrize("name", sorted(OUR_NAMES))
def test_no_other_installed_distribution_provides_our_import_names(name):
    providers = set(importlib.metadata.packages_distributions().get(name, ())) - {"surety-serving"}
    assert not providers, f"{name!r} is also installed by {sorted(providers)}"


def test_the_root_resolves_into_the_checkout():
    root = importlib.import_module("surety_serving")
    portions = {Path(p).resolve() for p in root.__path__}
    assert {REPO / "service" / "surety_serving", REPO / "kernels" / "surety_serving"} <= portions
    for module in (
        "surety_serving.cli",
        "surety_serving.main",
        "surety_serving.kernels",
        "surety_serving.kernels.reference",
    ):
        file = Path(importlib.import_module(module).__file__ or "").resolve()
        assert file.is_relative_to(REPO), (module, file)


def importable_names(folder: Path) -> set[str]:
    """The top-level names a folder on sys.path provides."""
    return {
        entry.name.removesuffix(".py")
        for entry in folder.iterdir()
        if entry.suffix == ".py" or (entry.is_dir() and any(entry.rglob("*.py")))
    }


def test_the_folders_on_the_import_path_hold_no_other_name():
    """The editable install puts service/ and kernels/ on sys.path (each holds a portion of the
    `surety_serving` namespace), and make build kit/: any other Python package or module there
    would be a new top-level name, importable by everyone."""
    for folder in {REPO / source.split("/")[0] for source in PACKAGES.values()}:
        assert importable_names(folder) == {"surety_serving"}, folder
    assert importable_names(KIT) == {"surety_kit"}


def test_the_kit_resolves_into_the_checkout_and_stays_out_of_the_wheel():
    kit = importlib.import_module("surety_kit")
    assert Path(kit.__file__ or "").resolve().is_relative_to(KIT), kit.__file__
    assert not any(source.startswith("kit") for source in PACKAGES.values()), PACKAGES


@pytest.mark.slow  # builds the wheel: the kernels compile in build/wheel-check (incremental)
def test_the_built_wheel_has_one_top_level_name(tmp_path):
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--config-settings", f"build-dir={REPO / 'build' / 'wheel-check'}"),
            *("--wheel-dir", str(tmp_path), str(REPO)),
        ],
        check=True,
        timeout=900,
    )
    (wheel,) = tmp_path.glob("surety_serving-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {
        "surety_serving",
        f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info",
    }
    for expected in (
        "surety_serving/cli.py",
        "surety_serving/kernels/__init__.py",
        "surety_serving/kernels/reference.py",
    ):
        assert expected in names
    assert "surety_serving/kernels/libsurety_kernels.so" in names
    assert not any(name.startswith("surety_serving/__init__") for name in names)  # a namespace root
    assert not any("/src/" in name or name.endswith((".cc", ".h")) for name in names)


#: Run from the repository root, where a folder named `kernels/` lies on the import path (''):
#: Hugging Face's package must still be the `kernels` that transformers gets.
BESIDE_HUGGING_FACE = """
import sys, tempfile
import numpy as np, onnxruntime as ort, torch
from onnx import TensorProto, helper
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import kernels
assert hasattr(kernels, "get_kernel"), kernels.__file__

config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
torch.manual_seed(0)
with tempfile.TemporaryDirectory() as folder:
    LlamaForCausalLM(config).save_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(torch.tensor([[1, 2, 3]])).logits
assert logits.shape == (1, 3, 32)

from surety_serving import kernels as ours
from surety_serving.kernels import reference
options = ort.SessionOptions()
options.register_custom_ops_library(ours.library_path())
node = helper.make_node("TwoPassSoftmax", ["X"], ["Y"], domain=ours.DOMAIN)
graph = helper.make_graph([node], "softmax",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 5])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 5])])
model_proto = helper.make_model(graph, opset_imports=[
    helper.make_opsetid("", 18), helper.make_opsetid(ours.DOMAIN, ours.OPSET_VERSION)])
session = ort.InferenceSession(model_proto.SerializeToString(), options,
                               providers=["CPUExecutionProvider"])
x = np.linspace(-3, 3, 10, dtype=np.float32).reshape(2, 5)
(y,) = session.run(None, {"X": x})
np.testing.assert_allclose(y, reference.two_pass_softmax(x)[0], rtol=1e-6, atol=1e-7)
print("hf-kernels", kernels.__file__, "transformers", transformers.__version__,
      "surety_serving.kernels", ours.isa())
"""


@pytest.mark.slow  # imports torch and transformers in a process of its own
@pytest.mark.network  # pip installs `kernels` when the lock has none
@pytest.mark.model
def test_hugging_face_kernels_and_ours_load_in_one_process(tmp_path):
    """Hugging Face's `kernels` comes with transformers ≥ 5.25 (then it is in the lock); where
    it does not, it is installed into a throwaway folder put first on the import path."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        target = tmp_path / "hf-kernels"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "kernels"],
            check=True,
            timeout=600,
        )
        env["PYTHONPATH"] = str(target)
    result = subprocess.run(
        [sys.executable, "-c", BESIDE_HUGGING_FACE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    hf_kernels = Path(result.stdout.split()[1]).resolve()
    assert not hf_kernels.is_relative_to(REPO / "kernels"), hf_kernels
