r"""propel nightly: the events up to yesterday -> scored audiences, one Airflow run a night.

Copy this file into your DAGs folder and set, as Airflow Variables or as environment
variables of the worker:

    propel_bin / PROPEL_BIN   path of the propel binary    (default: propel, from PATH)
    propel_job / PROPEL_JOB   path of the job file (TOML)  (default: /etc/propel/job.toml)

Which date is passed. `propel run --as-of D` uses the events strictly before day D. The run
that fires at 03:00 UTC on day D should therefore pass --as-of D: all of D-1, nothing of the
half-finished day D. The schedule below is a CronTriggerTimetable, whose logical date is
the moment the run fires, so `{{ ds }}` is D. (With the data-interval timetable that a plain
cron string gave in Airflow 2, `{{ ds }}` would be the interval start, D-1, one day short;
`{{ data_interval_end | ds }}` is D under both timetables.)

Backfill. catchup=True with max_active_runs=1 runs missed nights one at a time, oldest
first. A backfill's dates are compared with the fire time, 03:00, so give the last night
with its time. The as-of dates 2026-11-01 .. 2026-11-07, both included:

    airflow backfill create --dag-id propel_nightly --max-active-runs 1 \
        --from-date 2026-11-01 --to-date 2026-11-07T03:00          # Airflow 3
    airflow dags backfill -s 2026-11-01 -e 2026-11-07T03:00 propel_nightly   # Airflow 2

(An Airflow 3 backfill has its own limit, 10 runs at once, whatever the DAG says: keep
--max-active-runs 1, or the nights run out of order and wait on propel's lock.)

Exit codes of propel, and what Airflow does with them:
    0  success.
    4  model refused (too little history or too few positives/negatives): nothing is
       published and the model in production stays. Retrying cannot help, so the task is
       marked *skipped* (not failed, not retried), tasks downstream are skipped too, and
       the next night runs as usual. A skipped night in the grid is the signal to look.
    5  another propel run holds the lock on the output or state location: retried.
    1, 2, 3  other failure, configuration error, input data error: retried, then failed.
       (A configuration error fails the same way on every try; retries only cost time.)
"""

from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.bash import BashOperator

try:  # Airflow 3
    from airflow.sdk import DAG, CronTriggerTimetable
except ImportError:  # Airflow 2.11, with apache-airflow-providers-standard
    from airflow import DAG
    from airflow.timetables.trigger import CronTriggerTimetable

# Resolved when the task runs, not when the file is parsed: the Variable if it is set,
# else the worker's environment variable (expanded by bash), else the default.
PROPEL_BIN = "{{ var.value.get('propel_bin', '${PROPEL_BIN:-propel}') }}"
PROPEL_JOB = "{{ var.value.get('propel_job', '${PROPEL_JOB:-/etc/propel/job.toml}') }}"

with DAG(
    dag_id="propel_nightly",
    description="propel run --as-of <day of the run>: events -> scored audiences",
    # Every day at 03:00 UTC; logical date = fire time, so {{ ds }} = the day of the run.
    schedule=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),  # the first night to run
    catchup=True,  # run every missed night since start_date ...
    max_active_runs=1,  # ... one at a time, in order (propel also locks itself)
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=3),
    },
    tags=["propel"],
    doc_md=__doc__,
):
    BashOperator(
        task_id="propel_run",
        bash_command=(
            f'"{PROPEL_BIN}" run --job "{PROPEL_JOB}"'
            " --as-of {{ ds }} --log-format json"  # not an f-string: {{ ds }} is Airflow's
        ),
        # propel writes one JSON line per stage (with its timing) to stderr: the task log.
        skip_on_exit_code=4,  # model refused: skip, don't retry (see above)
    )
