"""One size's results as JSON, from the files bench/run.sh leaves behind."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path


def gnu_time(path: Path) -> dict:
    """Wall seconds, user and system processor seconds and peak RSS (MiB) from
    `/usr/bin/time -v`."""
    if not path.exists():
        return {}
    text = path.read_text()
    out = {}
    for key, label in [("user_s", "User time"), ("system_s", "System time")]:
        m = re.search(label + r" \(seconds\): ([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_mib"] = int(m.group(1)) // 1024
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", text)
    if m:
        h, mnt, s = m.groups()
        out["wall_s"] = int(h or 0) * 3600 + int(mnt) * 60 + float(s)
    return out


def stages_system_ms(path: Path) -> dict:
    """Each stage's system processor time (ms) from the run's JSON log lines (`stage done`),
    where the run logged it."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        fields = json.loads(line).get("fields", {})
        if fields.get("message") == "stage done" and "system_ms" in fields:
            out[fields["stage"]] = fields["system_ms"]
    return out


def middle(xs: list, key=lambda x: x):
    """The median element of `xs` by `key` (the lower one of an even count)."""
    return sorted(xs, key=key)[(len(xs) - 1) // 2]


def median_run(d: Path, name: str) -> dict | None:
    """Of the repeated runs `name.<k>.time` (with `name.<k>.run.json`): the median run's wall
    time and stages, the highest peak of them all, and every run's wall time; None if there is
    none."""
    runs = []
    for t in sorted(d.glob(f"{name}.*.time")):
        record = json.loads(t.with_suffix(".run.json").read_text())
        runs.append((gnu_time(t) | {"stages_system_ms": stages_system_ms(t)}, record))
    runs = [r for r in runs if "wall_s" in r[0]]
    if not runs:
        return None
    timed, record = middle(runs, key=lambda r: r[0]["wall_s"])
    if not timed["stages_system_ms"]:
        del timed["stages_system_ms"]
    return {
        "run": timed | {
            "peak_rss_mib": max(r[0].get("peak_rss_mib", 0) for r in runs),
            "stages_ms": record["timings_ms"],
            "runs_wall_s": sorted(r[0]["wall_s"] for r in runs),
        },
        "read": record.get("read"),
    }


def machine() -> str:
    """This machine as the results name it: cores, processor, memory, kernel, compiler."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.system()} {platform.release()}, {rustc}"


def main() -> None:
    size, n, dir_, run, duck, failure = sys.argv[1:7]
    d = Path(dir_)
    # Every figure of a result is measured on its machine; ones carried from an earlier run
    # keep the machine they were measured on.
    result = {"size": size, "target_events": int(n), "machine": machine()}
    if os.environ.get("CAP"):
        result["cap"] = os.environ["CAP"]
    gen = d / "generate.txt"
    if gen.exists():
        m = re.search(r"wrote (\d+) events", gen.read_text())
        result["events"] = int(m.group(1)) if m else None
    if (d / "generate_s.txt").exists():
        result["generate_s"] = float((d / "generate_s.txt").read_text())
    whole = median_run(d, "propel")
    result["propel"] = whole["run"] if whole and not failure else gnu_time(d / "propel.time")
    if failure:
        result["propel"]["failure"] = failure
        # The stages that finished before the failure, from the run's JSON log lines.
        log = (d / "propel.time").read_text() if (d / "propel.time").exists() else ""
        done = dict(re.findall(r'"stage":"([a-z]+)","ms":(\d+)', log))
        if done:
            result["propel"]["stages_ms"] = {k: int(v) for k, v in done.items()}
    if run:
        # The full run's record (the reruns from features write their own run.json).
        kept = d / "propel_run.json"
        record = json.loads((kept if kept.exists() else Path(run) / "run.json").read_text())
        result["propel"].setdefault("stages_ms", record["timings_ms"])
        result["propel"]["customers"] = record["rows"]["customers"]
        for key, name in [("from_features_cold", "features_cold.time"),
                          ("from_features_warm", "features_warm.time"),
                          ("from_features_edited", "features_edited.time")]:
            timed = gnu_time(d / name)
            text = (d / name).read_text() if (d / name).exists() else ""
            m = re.search(r"Exit status: (\d+)", text)
            if "terminated by signal" in text or (m and m.group(1) != "0"):
                # A rerun that failed has no time to compare: say why.
                why = re.search(r"(Command terminated by signal \d+|Exit status: \d+)", text)
                timed = {"failure": why.group(1) if why else "failed",
                         "peak_rss_mib": timed.get("peak_rss_mib")}
            result[key] = timed
    shard_times = sorted(d.glob("shard-*.time"), key=lambda p: int(p.stem.split("-")[1]))
    if shard_times:
        result["shards"] = {
            "count": len(shard_times),
            "each": [
                gnu_time(t) | {"stages_ms": json.loads(t.with_suffix(".run.json").read_text())["timings_ms"]}
                for t in shard_times
            ],
            "merge": gnu_time(d / "merge.time"),
            "identical": (d / "shards_identical.txt").read_text().strip() == "yes",
        }
    # The next night on 180 days: with a model trained nightly, and weekly (`weekly_`).
    for key, prefix in [("incremental", ""), ("incremental_weekly", "weekly_")]:
        nights, fulls = median_run(d, f"{prefix}incremental"), median_run(d, f"{prefix}full_refresh")
        if not nights or not fulls:
            continue
        gen = (d / "incremental_generate.txt").read_text()
        m = re.search(r"wrote (\d+) events", gen)
        metrics = d / f"{prefix}incremental.metrics.json"
        result[key] = {
            "history_days": 180,
            "events": int(m.group(1)) if m else None,
            "read": nights["read"],
            "training": json.loads(metrics.read_text()).get("training") if metrics.exists() else None,
            "night": nights["run"],
            "full": fulls["run"],
            "identical": (d / f"{prefix}incremental_identical.txt").read_text().strip() == "yes",
        }
    if duck:
        # `duck` names the repeated runs `<duck>.<k>.json` (with `.time`); an older harness left
        # one `duckdb.json`.
        runs = [json.loads(j.read_text()) | gnu_time(j.with_suffix(".time"))
                for j in sorted(Path(duck).parent.glob(Path(duck).name + ".*.json"))]
        if not runs and (d / "duckdb.json").is_file():
            runs = [json.loads((d / "duckdb.json").read_text()) | gnu_time(d / "duckdb.time")]
        if runs:
            out = dict(runs[0])
            for k in ["features_s", "scan_s", "wall_s"]:
                if all(k in r for r in runs):
                    out[k] = middle([r[k] for r in runs])
                    out[f"runs_{k}"] = sorted(r[k] for r in runs)
            out["peak_rss_mib"] = max(r.get("peak_rss_mib", 0) for r in runs)
            result["duckdb"] = out
    # What this run did not measure (steps left out by STEPS, or data generated before the
    # harness kept its files) stays as the earlier run of the harness recorded it, marked with
    # where it was measured.
    previous = Path(os.environ.get("PREVIOUS", ""))
    if previous.is_file():
        before = json.loads(previous.read_text())
        for key in ["events", "generate_s"]:
            if result.get(key) is None and before.get(key) is not None:
                result[key] = before[key]
        for key in ["duckdb", "incremental", "incremental_weekly", "shards"]:
            if key not in result and key in before:
                result[key] = before[key] | {
                    "measured": before[key].get("measured", "an earlier run of the harness"),
                    "machine": before[key].get("machine", before.get("machine")),
                }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
