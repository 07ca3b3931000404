"""Load jobs/airflow/ with a real Airflow DagBag, check the propel_sharded DAG, and run it.

    python tests/airflow/check_sharded.py --date YYYY-MM-DD --bin PROPEL --job JOB.toml

Checks the DAG's shape (N mapped shard tasks upstream of one merge, N = PROPEL_SHARDS),
then renders every command as Airflow would for the run firing on --date (Jinja, no
Variables set, so the PROPEL_BIN and PROPEL_JOB environment variables apply) and executes
them with bash in the DAG's order: the shards one by one, then the merge. Needs only an
Airflow install: no database, no scheduler, no network. Exits non-zero with a message on
the first problem; prints one OK line otherwise.
"""

import argparse
import atexit
import datetime as dt
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "propel_sharded"

if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import jinja2  # noqa: E402

try:  # Airflow 3
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 2
    from airflow.models.dagbag import DagBag


def fail(message):
    sys.exit(f"FAIL {DAG_ID}: {message}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--bin", type=Path, required=True, help="the propel binary")
    parser.add_argument("--job", type=Path, required=True, help="the job file to run")
    args = parser.parse_args()
    shards = int(os.environ.get("PROPEL_SHARDS", "4"))

    kwargs = {"dag_folder": str(REPO / "jobs" / "airflow")}
    if "include_examples" in inspect.signature(DagBag.__init__).parameters:
        kwargs["include_examples"] = False  # Airflow 2; Airflow 3 reads the setting above
    bag = DagBag(**kwargs)
    if bag.import_errors:
        fail(f"import errors: {bag.import_errors}")
    dag = bag.dags.get(DAG_ID)
    if dag is None:
        fail(f"not found (found: {sorted(bag.dags)})")
    shard, merge = dag.task_dict.get("propel_shard"), dag.task_dict.get("propel_merge")
    if shard is None or merge is None:
        fail(f"expected tasks propel_shard and propel_merge, found {sorted(dag.task_dict)}")
    if merge.upstream_task_ids != {"propel_shard"}:
        fail(f"propel_merge waits on {merge.upstream_task_ids}, expected the shards")
    if dag.max_active_runs != 1 or dag.catchup is not True:
        fail("nights must run in order: max_active_runs=1, catchup=True")
    if 4 not in merge.skip_on_exit_code:
        fail("the merge must skip (not retry) a refused model, exit code 4")
    mapped = shard.expand_input.value["bash_command"]
    if len(mapped) != shards:
        fail(f"{len(mapped)} mapped shard tasks, expected PROPEL_SHARDS={shards}")

    # The schedule fires at 03:00 on the day of the run; its logical date is that moment.
    context = {"ds": args.date.isoformat(), "var": {"value": {}, "json": {}}}
    env = dict(os.environ, PROPEL_BIN=str(args.bin), PROPEL_JOB=str(args.job))
    commands = mapped + [merge.bash_command]
    for i, template in enumerate(commands):
        command = jinja2.Template(template).render(context)
        want = f"--shard {i}/{shards}" if i < shards else f"--merge-shards {shards}"
        if want not in command or f"--as-of {args.date}" not in command:
            fail(f"task {i} renders {command!r}, expected {want} and --as-of {args.date}")
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{command!r} exited {done.returncode}:\n{done.stderr[-2000:]}")
    print(f"OK {DAG_ID}: {shards} mapped shards and the merge ran for --as-of {args.date}")


if __name__ == "__main__":
    main()
