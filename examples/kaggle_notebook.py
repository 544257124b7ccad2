"""Kaggle submission notebook for a kdq export (internet off), as a script with notebook cells.

In Kaggle: create a notebook for the LMSYS Chatbot Arena competition, add your exported
dataset (``kaggle datasets create -p EXPORT_DIR --dir-mode zip``), turn the internet off,
choose "GPU T4 x2", and paste the cells below (or upload this file and ``%run`` it).

Locally, against an export folder and a CSV in the competition format::

    python examples/kaggle_notebook.py --dataset-dir runs/export --test-csv test.csv --out submission.csv

It imports nothing but the standard library itself: the exported predict.py brings the
model code (torch + transformers), exactly as the notebook will run it.
"""
# %% [markdown]
# ## 1. Where things are

# %%
import argparse
import csv
import importlib.util
import json
import math
import runpy
import subprocess
import sys
import time
from pathlib import Path

KAGGLE_DATASET = "/kaggle/input/YOUR-DATASET-SLUG"  # the exported folder, as Kaggle mounts it
KAGGLE_TEST_CSV = "/kaggle/input/lmsys-chatbot-arena/test.csv"
KAGGLE_OUT = "/kaggle/working/submission.csv"
BACKENDS = {"gptq": ("gptqmodel", "optimum"), "bitsandbytes": ("bitsandbytes",)}


# %% [markdown]
# ## 2. Install the quantization backend from the dataset's wheels (offline)


# %%
def install_backend(dataset_dir: Path) -> list:
    """pip install, from ``wheels/`` only, the packages the manifest lists when the backend is missing.

    Returns the pip arguments used (empty when nothing was needed).
    """
    config = json.loads((dataset_dir / "config.json").read_text())
    method = (config.get("quantization_config") or {}).get("quant_method")
    missing = [m for m in BACKENDS.get(method, ()) if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    manifest = json.loads((dataset_dir / "kdq-manifest.json").read_text())
    wheels = manifest.get("wheels")
    if not wheels or not (dataset_dir / "wheels").is_dir():
        raise SystemExit(
            f"the model needs {missing} but the dataset has no wheels/ folder: re-export with "
            "ExportConfig(wheels=True) and upload with --dir-mode zip."
        )
    args = ["--no-index", "--find-links", str(dataset_dir / "wheels"), *wheels["install_args"]]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)
    return args


# %% [markdown]
# ## 3. Predict: the exported script, run in this process (all visible GPUs, swap TTA as exported)


# %%
def run_predict(dataset_dir: Path, test_csv, out, extra_args=()) -> None:
    predict = runpy.run_path(str(dataset_dir / "predict.py"))  # defines its functions; main() not run
    code = predict["main"](
        ["--model-dir", str(dataset_dir), "--test-csv", str(test_csv), "--out", str(out), *extra_args]
    )
    if code != 0:
        raise SystemExit(f"predict.py failed with exit code {code} (its message is above)")


# %% [markdown]
# ## 4. Check the submission before submitting


# %%
def check_submission(test_csv, out, scheme: str = "lmsys") -> int:
    """``scheme``: the model's label scheme (``config.json`` ``kdq_scheme``): ``lmsys`` submits three
    probabilities per row, ``wsdm`` (WSDM Cup 2025) the winner's name."""
    csv.field_size_limit(2**31 - 1)
    with open(test_csv, newline="", encoding="utf-8") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == ids, "submission ids differ from the test CSV"
    if scheme == "wsdm":
        assert rows[0] == ["id", "winner"], rows[0]
        assert all(r[1] in ("model_a", "model_b") for r in rows[1:]), "a winner is not model_a / model_b"
        return len(ids)
    assert rows[0] == ["id", "winner_model_a", "winner_model_b", "winner_tie"], rows[0]
    for r in rows[1:]:
        p = [float(x) for x in r[1:]]
        assert all(0.0 <= x <= 1.0 for x in p) and math.isclose(sum(p), 1.0, abs_tol=1e-6), r
    return len(ids)


# %%
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default=KAGGLE_DATASET)
    parser.add_argument("--test-csv", default=KAGGLE_TEST_CSV)
    parser.add_argument("--out", default=KAGGLE_OUT)
    parser.add_argument("predict_args", nargs="*", help="passed to predict.py after --, e.g. -- --no-tta")
    args = parser.parse_args(argv)
    dataset_dir = Path(args.dataset_dir)
    start = time.time()
    installed = install_backend(dataset_dir)
    if installed:
        print("installed from wheels:", " ".join(installed[3:]))
    run_predict(dataset_dir, args.test_csv, args.out, args.predict_args)
    scheme = json.loads((dataset_dir / "config.json").read_text()).get("kdq_scheme", "lmsys")
    n = check_submission(args.test_csv, args.out, scheme)
    print(f"submission ok: {n} rows in {time.time() - start:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
