"""Helpers shared by the propel notebooks: find a run, load its outputs, compute PSI,
re-score the linear model. Plain functions on polars frames and numpy arrays, so they
are easy to reuse in a notebook of your own (``from propel_nb import *``).

Which run a notebook opens:

- ``PROPEL_RUN``: a run directory (``<output>/<as-of>/``). Default: the newest date
  directory under ``../propel-demo/out`` (relative to the notebook's folder).
- ``PROPEL_PREVIOUS_RUN``: the run to compare with for drift. Default: the newest date
  directory beside the run that is older than it. ``none`` (or an empty value) means
  no comparison.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

DEFAULT_OUTPUT = Path("..") / "propel-demo" / "out"
DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Conventional PSI reading: below 0.1 stable, 0.1-0.25 worth a look, above 0.25 a shift.
PSI_MODERATE = 0.10
PSI_MAJOR = 0.25


def setup_display() -> None:
    """Table and figure defaults shared by the notebooks."""
    import matplotlib.pyplot as plt

    pl.Config.set_tbl_rows(60)
    pl.Config.set_tbl_cols(16)
    pl.Config.set_float_precision(4)
    pl.Config.set_fmt_str_lengths(60)
    plt.rcParams.update(
        {
            "figure.dpi": 96,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 11,
        }
    )


def number(d: dict, key: str) -> float:
    """``d[key]`` as a float; missing or null (JSON has no NaN) as NaN."""
    value = d.get(key)
    return float(value) if value is not None else float("nan")


# --------------------------------------------------------------------------------------
# Finding runs
# --------------------------------------------------------------------------------------


def run_dirs(output: Path) -> list[Path]:
    """Published runs under an output location: date-named directories, oldest first.

    A run directory appears only once complete (propel renames it into place after
    writing ``_SUCCESS``), so a date-named directory is a finished run.
    """
    output = Path(output)
    if not output.is_dir():
        return []
    return sorted(p for p in output.iterdir() if p.is_dir() and DATE_DIR.match(p.name))


def resolve_run(env: str = "PROPEL_RUN", default_output: Path = DEFAULT_OUTPUT) -> Path:
    """The run directory to open: ``$PROPEL_RUN``, else the newest run of the demo."""
    value = os.environ.get(env, "").strip()
    if value:
        path = Path(value).expanduser()
        if not (path / "metrics.json").is_file():
            raise FileNotFoundError(
                f"{env}={value!r} is not a propel run directory (no metrics.json in it); "
                "expected <output>/<as-of>/ as written by `propel run`"
            )
        return path.resolve()
    runs = run_dirs(default_output)
    if not runs:
        raise FileNotFoundError(
            f"no run found under {Path(default_output).resolve()}: set {env} to a run "
            "directory, or run `propel run` at the repository root to create the demo"
        )
    return runs[-1].resolve()


def resolve_previous_run(run: Path, env: str = "PROPEL_PREVIOUS_RUN") -> Path | None:
    """The run to compare ``run`` with: ``$PROPEL_PREVIOUS_RUN``, else the newest date
    directory beside ``run`` that is older than it, else None."""
    if env in os.environ:
        value = os.environ[env].strip()
        if value == "" or value.lower() == "none":
            return None
        path = Path(value).expanduser()
        if not (path / "metrics.json").is_file():
            raise FileNotFoundError(
                f"{env}={value!r} is not a propel run directory (no metrics.json in it)"
            )
        return path.resolve()
    older = [p for p in run_dirs(run.parent) if p.name < run.name]
    return older[-1].resolve() if older else None


# --------------------------------------------------------------------------------------
# Loading a run
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One published run. Files are read on first use and kept."""

    path: Path
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def as_of(self) -> str:
        return str(self.metrics.get("as_of", self.path.name))

    @cached_property
    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())

    @cached_property
    def model(self) -> dict:
        return json.loads((self.path / "model" / "model.json").read_text())

    @property
    def feature_names(self) -> list[str]:
        """Features in model order (the model artifact is the source of truth)."""
        return list(self.model["feature_names"])

    def parquet(self, name: str) -> pl.DataFrame:
        if name not in self._cache:
            self._cache[name] = pl.read_parquet(self.path / f"{name}.parquet")
        return self._cache[name]

    def has(self, relative: str) -> bool:
        return (self.path / relative).exists()

    @property
    def scores(self) -> pl.DataFrame:
        return self.parquet("scores")

    @property
    def features(self) -> pl.DataFrame:
        return self.parquet("features")

    @property
    def sessions(self) -> pl.DataFrame:
        return self.parquet("sessions")

    @property
    def identity(self) -> pl.DataFrame:
        return self.parquet("identity")

    def audience_file(self, entry: dict) -> tuple[Path | None, int | None]:
        """The member list of an audience entry of ``metrics["audiences"]`` that carries
        propel ids and scores, and the row count metrics.json gives for it.

        Two layouts: ``{name, size, file}`` (one CSV per audience), or
        ``{name, size, delivered, deliveries: [{destination, file, count, ...}]}``, where
        the internal ``parquet`` or ``csv`` destination has the ids (platform files carry
        hashed match keys only)."""
        if entry.get("file"):
            return self.path / entry["file"], entry.get("size")
        deliveries = {d.get("destination"): d for d in entry.get("deliveries") or []}
        for destination in ("parquet", "csv"):
            d = deliveries.get(destination)
            if d and d.get("file"):
                return self.path / d["file"], d.get("count")
        return None, None

    def audience(self, entry: dict) -> pl.DataFrame | None:
        """An audience's members read back from its file (ids stay text), or None when the
        run wrote no member list with propel ids for it."""
        path, _ = self.audience_file(entry)
        if path is None or not path.exists():
            return None
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(
            path, schema_overrides={"customer_id": pl.String, "email_sha256": pl.String}
        )

    def describe(self) -> str:
        m = self.metrics
        rows = m.get("rows", {})
        return (
            f"run {self.as_of} at {self.path}\n"
            f"  customers scored {rows.get('scored', '?')}, events used "
            f"{m.get('ingest', {}).get('used', '?')}, model {m.get('model', {}).get('kind', '?')}, "
            f"validation AUC {m.get('auc', float('nan')):.3f} (n = {m.get('n_validation', '?')})"
        )


# --------------------------------------------------------------------------------------
# Population stability index
# --------------------------------------------------------------------------------------


def as_float(values) -> np.ndarray:
    """Any 1-d input (polars Series, list, array) as float64 with null -> NaN."""
    if isinstance(values, pl.Series):
        values = values.cast(pl.Float64).to_numpy()
    return np.asarray(values, dtype=np.float64)


@dataclass
class PsiResult:
    psi: float
    bins: pl.DataFrame  # bin, expected (reference share), actual (current share), term
    kind: str  # "quantile", "per value", "constant", "all-null"


def psi_edges(reference, n_bins: int = 10) -> np.ndarray:
    """Inner bin edges for PSI from the reference's non-null values; bins are right-closed:
    ``(-inf, e1], (e1, e2], ..., (ek, inf)``.

    - At most ``n_bins`` distinct values (flags, small counts, buckets): one bin per value.
    - Otherwise the quantiles 1/n .. (n-1)/n (observed values, no interpolation),
      duplicates dropped: a value that piles up (say 60 % zeros) collapses several
      quantiles into one edge and so gets one bin of its own, instead of empty slivers.
      An edge at the maximum is dropped (it would leave the last bin empty); if that
      leaves none, the edge sits just below the maximum.
    """
    x = as_float(reference)
    x = x[np.isfinite(x)]
    distinct = np.unique(x)
    if distinct.size <= n_bins:
        return distinct[:-1]
    # The small nudge keeps float noise (0.6000000000000001) from skipping past a value
    # that holds exactly that share, which would leave a sliver bin.
    probs = np.linspace(0, 1, n_bins + 1)[1:-1] - 1e-9
    qs = np.quantile(x, probs, method="inverted_cdf")
    edges = np.unique(qs)
    edges = edges[edges < distinct[-1]]
    return edges if edges.size else distinct[-2:-1]


def psi(reference, current, n_bins: int = 10, eps: float = 1e-4) -> PsiResult:
    """PSI of ``current`` against ``reference`` = sum over bins of (a - e) * ln(a / e).

    - Bins come from the reference's quantiles (``psi_edges``); values outside the
      reference's range fall in the open-ended first and last bins.
    - Nulls (and NaN / inf) are a bin of their own, so a change in the null rate counts.
    - A constant reference feature gets the bins "= value" and "!= value" (plus nulls).
    - Shares are floored at ``eps`` so an empty bin gives a large but finite term.
    """
    ref, cur = as_float(reference), as_float(current)
    ref_ok, cur_ok = np.isfinite(ref), np.isfinite(cur)
    finite_ref = ref[ref_ok]
    if finite_ref.size == 0:
        kind, labels = "all-null", ["not null"]
        ref_bin = np.zeros(ref.size, dtype=int)
        cur_bin = np.zeros(cur.size, dtype=int)
    elif np.all(finite_ref == finite_ref[0]):
        v = finite_ref[0]
        kind, labels = "constant", [f"= {v:g}", f"!= {v:g}"]
        ref_bin = np.where(ref == v, 0, 1)
        cur_bin = np.where(cur == v, 0, 1)
    else:
        edges = psi_edges(finite_ref, n_bins)
        kind = "per value" if np.unique(finite_ref).size <= n_bins else "quantile"
        labels = _bin_labels(edges)
        ref_bin = np.searchsorted(edges, ref, side="left")
        cur_bin = np.searchsorted(edges, cur, side="left")
    null_bin = len(labels)
    labels = labels + ["null"]
    ref_bin = np.where(ref_ok, ref_bin, null_bin)
    cur_bin = np.where(cur_ok, cur_bin, null_bin)
    k = len(labels)
    e = np.bincount(ref_bin, minlength=k) / max(ref.size, 1)
    a = np.bincount(cur_bin, minlength=k) / max(cur.size, 1)
    e_s, a_s = np.maximum(e, eps), np.maximum(a, eps)
    term = (a_s - e_s) * np.log(a_s / e_s)
    bins = pl.DataFrame({"bin": labels, "expected": e, "actual": a, "term": term})
    if e[-1] == 0 and a[-1] == 0:  # no nulls on either side: drop the empty null bin
        bins = bins.head(k - 1)
    return PsiResult(float(term.sum()), bins, kind)


def _bin_labels(edges: np.ndarray) -> list[str]:
    if edges.size == 0:
        return ["all"]
    e = [_fmt(v) for v in edges]
    return [f"<= {e[0]}", *(f"({lo}, {hi}]" for lo, hi in zip(e[:-1], e[1:])), f"> {e[-1]}"]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def psi_label(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value >= PSI_MAJOR:
        return "shift"
    if value >= PSI_MODERATE:
        return "watch"
    return "stable"


def psi_table(
    reference: pl.DataFrame, current: pl.DataFrame, columns: list[str], n_bins: int = 10
) -> pl.DataFrame:
    """One row per column present in both frames: PSI, its reading, null rates, medians."""
    rows = []
    for c in columns:
        if c not in reference.columns or c not in current.columns:
            continue
        r, k = reference[c], current[c]
        res = psi(r, k, n_bins)
        rows.append(
            {
                "feature": c,
                "psi": res.psi,
                "reading": psi_label(res.psi),
                "binning": res.kind,
                "null_rate_previous": _null_rate(r),
                "null_rate_current": _null_rate(k),
                "median_previous": _median(r),
                "median_current": _median(k),
                "mean_previous": _mean(r),
                "mean_current": _mean(k),
            }
        )
    return pl.DataFrame(rows).sort("psi", descending=True)


def _null_rate(s: pl.Series) -> float:
    x = as_float(s)
    return float((~np.isfinite(x)).mean()) if x.size else float("nan")


def _median(s: pl.Series) -> float:
    x = as_float(s)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def _mean(s: pl.Series) -> float:
    x = as_float(s)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


# --------------------------------------------------------------------------------------
# Re-scoring the linear model from model.json
# --------------------------------------------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def linear_contributions(model: dict, features: pl.DataFrame) -> np.ndarray:
    """Per-feature log-odds contributions ``coefficient x standardised value`` of a
    logistic-regression artifact, as propel computes them: a missing value is imputed
    with the training mean, i.e. a standardised 0. Shape (rows, features)."""
    if model.get("kind") != "logistic_regression":
        raise ValueError(
            f"linear contributions need a logistic regression, not {model.get('kind')!r}"
        )
    names = model["feature_names"]
    scaler = model["scaler"]
    mean = np.asarray(scaler["mean"], dtype=np.float64)
    scale = np.asarray(scaler.get("scale", scaler.get("std")), dtype=np.float64)
    x = features.select([pl.col(n).cast(pl.Float64) for n in names]).to_numpy()
    z = np.where(np.isfinite(x), (x - mean) / scale, 0.0)
    return z * np.asarray(model["coefficients"], dtype=np.float64)


def linear_predict(model: dict, features: pl.DataFrame) -> np.ndarray:
    """Calibrated probability: sigmoid(a * (intercept + sum of contributions) + b)."""
    logit = model["intercept"] + linear_contributions(model, features).sum(axis=1)
    cal = model.get("calibration") or {"a": 1.0, "b": 0.0}
    return sigmoid(cal["a"] * logit + cal["b"])


# --------------------------------------------------------------------------------------
# Evaluation curves from predictions and outcomes
# --------------------------------------------------------------------------------------


def roc_curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every distinct threshold, and the AUC (ties
    count one half, as in the Mann-Whitney statistic)."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], label[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    P, N = y.sum(), (~y).sum()
    tpr = np.r_[0.0, tp / max(P, 1)]
    fpr = np.r_[0.0, fp / max(N, 1)]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def pr_curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Recall, precision at every distinct threshold, and the average precision."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], label[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[distinct]
    k = distinct + 1
    P = max(y.sum(), 1)
    recall, precision = tp / P, tp / k
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return recall, precision, ap


def gain_curve(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of customers contacted (best first) against share of buyers reached."""
    order = np.argsort(-score, kind="stable")
    y = label[order].astype(bool)
    n, P = y.size, max(y.sum(), 1)
    return np.r_[0.0, np.arange(1, n + 1) / n], np.r_[0.0, np.cumsum(y) / P]


def _ranking(score: np.ndarray) -> np.ndarray:
    """Indices by score, best first; ties keep input order (as propel ranks)."""
    return np.argsort(-score, kind="stable")


def decile_table(score: np.ndarray, label: np.ndarray) -> pl.DataFrame:
    """Validation deciles as metrics.json cuts them: decile d (1 = top) holds the ranks
    ``[(d-1) * n // 10, d * n // 10)``; size, positives, rate, lift, cumulative gain,
    mean predicted probability and the lowest score in the decile."""
    n = score.size
    order = _ranking(score)
    bounds = np.arange(11) * n // 10
    decile = np.empty(n, dtype=np.int32)
    decile[order] = np.searchsorted(bounds, np.arange(n), side="right")
    y = label.astype(bool)
    base = y.mean() if n else float("nan")
    total = max(int(y.sum()), 1)
    return (
        pl.DataFrame({"decile": decile, "score": score, "label": y})
        .group_by("decile")
        .agg(
            n=pl.len(),
            positives=pl.col("label").sum(),
            mean_predicted=pl.col("score").mean(),
            min_score=pl.col("score").min(),
        )
        .sort("decile")
        .with_columns(rate=pl.col("positives") / pl.col("n"))
        .with_columns(
            lift=pl.col("rate") / base,
            cumulative_gain=pl.col("positives").cum_sum() / total,
        )
    )


def calibration_table(score: np.ndarray, label: np.ndarray, n_bins: int = 10) -> pl.DataFrame:
    """Equal-width probability bins ``[lo, hi)`` (the last one closed), empty bins left
    out: size, mean predicted, observed rate, as in metrics.json's calibration_curve."""
    inner = np.arange(1, n_bins) / n_bins
    b = np.searchsorted(inner, score, side="right")
    df = pl.DataFrame({"bin": b, "score": score, "label": label.astype(np.float64)})
    return (
        df.group_by("bin")
        .agg(
            n=pl.len(),
            mean_predicted=pl.col("score").mean(),
            observed_rate=pl.col("label").mean(),
        )
        .sort("bin")
        .with_columns(lower=pl.col("bin") / n_bins, upper=(pl.col("bin") + 1) / n_bins)
        .select("lower", "upper", "n", "mean_predicted", "observed_rate")
    )


def expected_calibration_error(cal: pl.DataFrame) -> float:
    """Bin-size-weighted mean of |mean predicted - observed rate|."""
    n = cal["n"].sum()
    return float(((cal["n"] / n) * (cal["mean_predicted"] - cal["observed_rate"]).abs()).sum())


def precision_at(score: np.ndarray, label: np.ndarray, percent: float) -> float:
    """Share of positives among the top ``ceil(n * percent / 100)`` (at least one)."""
    top = max(math.ceil(score.size * percent / 100.0), 1)
    return float(label.astype(bool)[_ranking(score)[:top]].mean())


def validation_metrics(score: np.ndarray, label: np.ndarray) -> dict:
    """The scalar metrics of metrics.json, recomputed from predictions and outcomes."""
    y = label.astype(bool)
    p = np.clip(score, 1e-15, 1 - 1e-15)
    base = y.mean()
    return {
        "n": int(y.size),
        "positive_rate": float(base),
        "auc": roc_curve(score, y)[2],
        "pr_auc": pr_curve(score, y)[2],
        "log_loss": float(-np.mean(np.where(y, np.log(p), np.log(1 - p)))),
        "brier": float(np.mean((score - y) ** 2)),
        "ece": expected_calibration_error(calibration_table(score, y)),
        "lift_top_decile": float(precision_at(score, y, 10) / base) if base > 0 else float("nan"),
        "precision_at_5": precision_at(score, y, 5),
        "precision_at_10": precision_at(score, y, 10),
        "precision_at_20": precision_at(score, y, 20),
    }


def curves_from_deciles(deciles: pl.DataFrame) -> dict:
    """Coarse ROC, precision-recall and gain curves through the ten decile cuts of
    metrics.json (for runs without validation.parquet): at each cut, the positives and
    negatives above it give one point of each curve."""
    n = deciles["n"].cast(pl.Float64).to_numpy()
    pos = deciles["positives"].cast(pl.Float64).to_numpy()
    neg = n - pos
    P, N = pos.sum(), neg.sum()
    cum_n, cum_pos, cum_neg = np.cumsum(n), np.cumsum(pos), np.cumsum(neg)
    fpr, tpr = np.r_[0.0, cum_neg / N], np.r_[0.0, cum_pos / P]
    recall, precision = cum_pos / P, cum_pos / cum_n
    return {
        "roc": (fpr, tpr, float(np.trapezoid(tpr, fpr))),
        "pr": (recall, precision, float(np.sum(np.diff(np.r_[0.0, recall]) * precision))),
        "gain": (np.r_[0.0, cum_n / n.sum()], np.r_[0.0, cum_pos / P]),
    }


# --------------------------------------------------------------------------------------
# Rank correlation with nulls
# --------------------------------------------------------------------------------------


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse]


def spearman_matrix(df: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """Spearman correlation of every pair of columns over the rows where both are finite
    (pairwise complete), ranked within those rows. NaN where a side is constant there."""
    cols = [as_float(df[c]) for c in columns]
    ok = [np.isfinite(c) for c in cols]
    complete = [bool(m.all()) for m in ok]
    full_ranks = [average_ranks(c) if f else None for c, f in zip(cols, complete)]
    k = len(columns)
    out = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(i, k):
            if complete[i] and complete[j]:
                a, b = full_ranks[i], full_ranks[j]
            else:
                both = ok[i] & ok[j]
                if both.sum() < 3:
                    continue
                a, b = average_ranks(cols[i][both]), average_ranks(cols[j][both])
            if a.std() == 0 or b.std() == 0:
                continue
            out[i, j] = out[j, i] = float(np.corrcoef(a, b)[0, 1])
    return out
