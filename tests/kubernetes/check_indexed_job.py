"""Check jobs/kubernetes/propel-sharded.yaml and run its pods' commands locally.

    python tests/kubernetes/check_indexed_job.py --as-of YYYY-MM-DD --bin PROPEL --job JOB.toml

Checks that the shards are an Indexed Job whose completions, parallelism and `--shard I/N`
agree, that the merge merges the same N, that both mount the same state volume where the
ConfigMap's job file puts the state; then runs each pod's command as Kubernetes would
($(VAR) expanded from the container's env and JOB_COMPLETION_INDEX), with `propel` replaced
by --bin and the mounted job file by --job: every shard, then the merge. Needs PyYAML only.
Exits non-zero with a message on the first problem; prints one OK line otherwise.
"""

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "jobs" / "kubernetes" / "propel-sharded.yaml"


def fail(message):
    sys.exit(f"FAIL {MANIFEST.name}: {message}")


def expand(arg, env):
    """Kubernetes' $(VAR) expansion of a command argument."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--job", required=True)
    args = parser.parse_args()

    text = MANIFEST.read_text().replace("${AS_OF}", args.as_of)  # what envsubst does
    docs = list(yaml.safe_load_all(text))
    by_step = {(d["kind"], d["metadata"]["labels"]["step"]): d for d in docs}
    config = by_step.get(("ConfigMap", "shards"))
    shards, merge = by_step.get(("Job", "shards")), by_step.get(("Job", "merge"))
    if not (config and shards and merge):
        fail(f"expected a ConfigMap and the shards and merge Jobs, found {list(by_step)}")
    spec = shards["spec"]
    if spec.get("completionMode") != "Indexed":
        fail("the shards Job must be Indexed (JOB_COMPLETION_INDEX is the shard)")
    n = spec["completions"]
    if spec.get("parallelism") != n:
        fail(f"parallelism {spec.get('parallelism')} differs from completions {n}")

    def container(job):
        return job["spec"]["template"]["spec"]["containers"][0]

    def state_mount(job):
        pod = job["spec"]["template"]["spec"]
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        mounts = [(claims.get(m["name"]), m["mountPath"]) for m in container(job)["volumeMounts"]]
        return [m for m in mounts if m[0]]

    if state_mount(shards) != state_mount(merge) or not state_mount(shards):
        fail(f"shards mount {state_mount(shards)}, the merge {state_mount(merge)}: one shared state")
    job_toml = tomllib.loads(config["data"]["job.toml"])
    if job_toml.get("state", {}).get("url") != state_mount(shards)[0][1]:
        fail("the job file's state.url must be the shared volume's mount path")

    def run(job, index=None):
        c = container(job)
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        argv = [expand(a, env) for a in c["command"]]
        want = f"--shard {index}/{n}" if index is not None else f"--merge-shards {n}"
        if want not in " ".join(argv) or f"--as-of {args.as_of}" not in " ".join(argv):
            fail(f"pod command {argv} lacks {want} or --as-of {args.as_of}")
        argv = [args.bin if a == "propel" else args.job if a == "/etc/propel/job.toml" else a for a in argv]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{argv} exited {done.returncode}:\n{done.stderr[-2000:]}")

    for index in range(n):
        run(shards, index)
    run(merge)
    print(f"OK {MANIFEST.name}: {n} indexed shards and the merge ran for --as-of {args.as_of}")


if __name__ == "__main__":
    main()
