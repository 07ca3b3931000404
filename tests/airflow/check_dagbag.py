"""Load jobs/airflow/ with a real Airflow DagBag and check the propel_nightly DAG.

    python tests/airflow/check_dagbag.py [--date YYYY-MM-DD] [--dag-folder DIR]

Needs only an Airflow install: no database, no scheduler, no network. Exits non-zero with
a message on the first problem; prints one OK line otherwise.
"""

import argparse
import atexit
import datetime as dt
import inspect
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAG_FOLDER = REPO / "jobs" / "airflow"
DAG_ID, TASK_ID = "propel_nightly", "propel_run"

# Before Airflow is imported: a throwaway AIRFLOW_HOME (else ~/airflow is created), no
# example DAGs, and only warnings from Airflow's own logging.
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-home-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import airflow  # noqa: E402
from airflow.timetables.base import TimeRestriction  # noqa: E402

try:  # Airflow 3
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.encoders import coerce_to_core_timetable
except ImportError:  # Airflow 2
    from airflow.models.dagbag import DagBag

    def coerce_to_core_timetable(timetable):
        return timetable


def fail(message):
    sys.exit(f"FAIL {DAG_ID}: {message}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--date",
        type=dt.date.fromisoformat,
        default=dt.date(2026, 11, 5),
        help="day of the scheduled run to render (default: 2026-11-05)",
    )
    parser.add_argument("--dag-folder", type=Path, default=DAG_FOLDER)
    args = parser.parse_args()
    date, folder = args.date, args.dag_folder

    kwargs = {"dag_folder": str(folder)}
    if "include_examples" in inspect.signature(DagBag.__init__).parameters:
        kwargs["include_examples"] = False  # Airflow 2; Airflow 3 reads the setting above
    bag = DagBag(**kwargs)
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"import error in {path}:\n{error}", file=sys.stderr)
        fail(f"{len(bag.import_errors)} import error(s) in {folder}")

    # bag.dags, not bag.get_dag(): the latter asks the metadata database.
    dag = bag.dags.get(DAG_ID)
    if dag is None:
        fail(f"not found in {folder} (found: {sorted(bag.dags) or 'none'})")
    if TASK_ID not in dag.task_dict:
        fail(f"no task {TASK_ID!r} (tasks: {sorted(dag.task_dict)})")
    task = dag.get_task(TASK_ID)
    if not task.retries or task.retries <= 0:
        fail(f"retries is {task.retries!r}, expected > 0")
    if dag.max_active_runs != 1:
        fail(f"max_active_runs is {dag.max_active_runs!r}, expected 1 (nights run in order)")
    if dag.catchup is not True:
        fail(f"catchup is {dag.catchup!r}, expected True")
    if 4 not in task.skip_on_exit_code:
        fail(f"skip_on_exit_code is {task.skip_on_exit_code!r}, expected to hold 4")

    # The scheduled run that fires on `date`, planned as the scheduler does: run after run
    # from two days before (a data-interval timetable's run fires at its interval's end).
    timetable = coerce_to_core_timetable(dag.timetable)
    start = dt.datetime.combine(date - dt.timedelta(days=2), dt.time(), tzinfo=dt.timezone.utc)
    restriction = TimeRestriction(earliest=start, latest=None, catchup=True)
    run = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    while run is not None and run.run_after.date() < date:
        run = timetable.next_dagrun_info(
            last_automated_data_interval=run.data_interval, restriction=restriction
        )
    if run is None or run.run_after.date() != date:
        fail(f"no scheduled run fires on {date} (next: {run and run.run_after})")
    logical_date = run.logical_date
    context = {
        "logical_date": logical_date,
        "ds": logical_date.strftime("%Y-%m-%d"),
        "ds_nodash": logical_date.strftime("%Y%m%d"),
        "ts": logical_date.isoformat(),
        "data_interval_start": run.data_interval.start,
        "data_interval_end": run.data_interval.end,
        "var": {"value": {}, "json": {}},  # no Variables set: every default applies
    }
    command = task.render_template(task.bash_command, context)
    # propel's --as-of D uses the events before D: the run firing on day D passes D.
    if not re.search(rf"--as-of {date.isoformat()}(\s|$)", command):
        fail(f"the run firing at {run.run_after} renders {command!r}, expected --as-of {date}")

    print(
        f"OK {DAG_ID} (Airflow {airflow.__version__}): no import errors,"
        f" retries={task.retries}, max_active_runs={dag.max_active_runs}, catchup={dag.catchup},"
        f" run firing {run.run_after.isoformat()} -> --as-of {date}"
    )


if __name__ == "__main__":
    main()
