#!/usr/bin/env python3
"""Execute the notebooks in this folder top to bottom against one propel run.

    python notebooks/execute.py --run propel-demo/out/2026-08-30 --out /tmp/nb-out
    python notebooks/execute.py --run RUN --previous OLDER_RUN --out DIR 01_features_and_drift.ipynb

Each notebook runs in a fresh kernel of *this* Python interpreter (so a virtualenv's
packages are the ones used, whatever kernels Jupyter has registered), with the notebooks
folder as working directory. ``--run`` and ``--previous`` reach the notebooks as
``PROPEL_RUN`` and ``PROPEL_PREVIOUS_RUN``.

A notebook passes when every cell runs without error within the per-cell timeout and it
shows at least ``metadata.propel.min_figures`` images (``min_figures_with_previous`` when
``--previous`` names a run). Executed copies go to ``--out`` (never into this folder),
failing ones too, so their error output can be read. One summary line per notebook; the
exit status is 0 only if all passed, 1 if any failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import default

HERE = Path(__file__).resolve().parent
IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ThisInterpreterSpecs(KernelSpecManager):
    """Every kernel name resolves to an IPython kernel of the running interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        from ipykernel.kernelspec import RESOURCES, get_kernel_dict

        spec = get_kernel_dict()  # argv starts with sys.executable
        spec["display_name"] = f"Python {sys.version.split()[0]} ({sys.executable})"
        return KernelSpec(resource_dir=RESOURCES, **spec)


class ThisInterpreterKernelManager(AsyncKernelManager):
    # Encrypt the kernel's local TCP sockets when pyzmq can (else the kernel warns).
    @default("transport_encryption")
    def _default_transport_encryption(self) -> str:
        import zmq

        return "auto" if zmq.has("curve") else "disabled"

    @default("kernel_spec_manager")
    def _default_kernel_spec_manager(self) -> KernelSpecManager:
        return ThisInterpreterSpecs(data_dir=self.data_dir)


def count_images(nb) -> int:
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") in ("display_data", "execute_result")
        and any(t in out.get("data", {}) for t in IMAGE_TYPES)
    )


def count_stderr(nb) -> int:
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stderr"
    )


def first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:60]
    return ""


def run_one(path: Path, out_dir: Path, timeout: int, with_previous: bool) -> tuple[bool, str]:
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("propel", {})
    key = (
        "min_figures_with_previous"
        if with_previous and "min_figures_with_previous" in meta
        else "min_figures"
    )
    if not isinstance(meta.get(key), int):
        return (
            False,
            f"metadata.propel.{key} is missing or not an integer: declare the figures it must produce",
        )
    min_figures = meta[key]

    current = {"index": None}

    def on_cell_start(cell, cell_index):
        current["index"] = cell_index

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        kernel_manager_class=ThisInterpreterKernelManager,
        resources={"metadata": {"path": str(HERE)}},
        on_cell_start=on_cell_start,
    )
    started = time.monotonic()
    error = None
    try:
        client.execute()
    except CellTimeoutError:
        error = f"timed out after {timeout} s"
    except DeadKernelError as e:
        error = f"kernel died: {e}"
    except CellExecutionError as e:
        error = f"{e.ename}: {first_line(e.evalue) or '(no message)'}"
        # The full traceback, for CI logs that keep no files.
        print(ANSI.sub("", str(e)), file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started

    out_path = out_dir / path.name
    nbformat.write(nb, out_path)
    figures = count_images(nb)
    code_cells = sum(1 for c in nb.cells if c.cell_type == "code")
    if error is not None:
        i = current["index"]
        cell = nb.cells[i] if i is not None else None
        where = (
            f"cell {i + 1} of {len(nb.cells)} (id {cell.get('id', '?')}, `{first_line(cell.source)}`)"
            if cell is not None
            else "before the first cell"
        )
        return False, f"{where}: {error}; executed copy: {out_path}"
    if figures < min_figures:
        return False, (
            f"{figures} figures, expected at least {min_figures} (metadata.propel.{key}); "
            f"executed copy: {out_path}"
        )
    note = f"{code_cells} code cells, {figures} figures (min {min_figures}), {elapsed:.1f} s"
    stderr = count_stderr(nb)
    if stderr:
        note += f", {stderr} stderr outputs"
    return True, f"{note} -> {out_path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        type=Path,
        help="run directory <output>/<as-of>/ (PROPEL_RUN); default: the newest demo run",
    )
    parser.add_argument(
        "--previous", help="run to compare with for drift (PROPEL_PREVIOUS_RUN), or 'none'"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the executed copies")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    parser.add_argument(
        "notebooks", nargs="*", help="notebooks to run (default: every *.ipynb here)"
    )
    args = parser.parse_args(argv)

    out_dir = args.out.resolve()
    if out_dir == HERE or HERE in out_dir.parents:
        parser.error(f"--out {out_dir} is inside {HERE}: executed copies must go elsewhere")
    if args.run is not None:
        if not (args.run / "metrics.json").is_file():
            parser.error(f"--run {args.run}: not a propel run directory (no metrics.json)")
        os.environ["PROPEL_RUN"] = str(args.run.resolve())
    with_previous = False
    if args.previous is not None:
        if args.previous.strip().lower() in ("", "none"):
            os.environ["PROPEL_PREVIOUS_RUN"] = "none"
        else:
            prev = Path(args.previous)
            if not (prev / "metrics.json").is_file():
                parser.error(f"--previous {prev}: not a propel run directory (no metrics.json)")
            os.environ["PROPEL_PREVIOUS_RUN"] = str(prev.resolve())
            with_previous = True

    if args.notebooks:
        paths = [
            (HERE / n) if not Path(n).is_absolute() and not Path(n).exists() else Path(n)
            for n in args.notebooks
        ]
    else:
        paths = sorted(HERE.glob("*.ipynb"))
    if not paths:
        parser.error(f"no notebooks found in {HERE}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Kernels import propel_nb from this folder: leave no __pycache__ behind in it.
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

    print(
        f"python {sys.executable}; run {os.environ.get('PROPEL_RUN', '(default: newest demo run)')}; "
        f"previous {os.environ.get('PROPEL_PREVIOUS_RUN', '(default: the older run beside it)')}"
    )
    failed = 0
    for path in paths:
        ok, note = run_one(path.resolve(), out_dir, args.timeout, with_previous)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {path.name}: {note}", flush=True)
    print(f"notebooks: {len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
