r"""propel nightly in shards: the per-customer stages fanned out over N workers, then a merge.

The same night as propel_nightly.py (read its notes on dates, backfills and exit codes), cut
by customer: N mapped tasks run `propel run --shard I/N` (Airflow dynamic task mapping), each
computing sessions, labels, features and consent for the customers whose id hashes to I;
then one task runs `propel run --merge-shards N`, which trains (when a training is due),
scores, publishes and commits the night. The published files are byte-identical to those
of one unsharded run.

Every shard and the merge must see the same state location (the job's `state`, or
<output>/_state): a shared file system (NFS, EFS, a ReadWriteMany volume) when the workers
are separate machines. Ingest and identity resolution run in every shard (a customer's
identity depends on all events); what is split is the per-customer work after them.

Set, as Airflow Variables or environment variables of the worker, as for propel_nightly:

    propel_bin / PROPEL_BIN   path of the propel binary    (default: propel, from PATH)
    propel_job / PROPEL_JOB   path of the job file (TOML)  (default: /etc/propel/job.toml)

and, in the environment of the scheduler and DAG processor (it fixes the number of mapped
tasks when the file is parsed; if it changes between a night's shards and its merge, the
merge finds no parts for the new N and names the shard to run):

    PROPEL_SHARDS             number of shards             (default: 4)

Exit codes: a shard never trains, so it never exits 4; the merge exits 4 when the model is
refused (skipped, as in propel_nightly). Exit 5 (lock held) is retried on both.
"""

import os
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.bash import BashOperator

try:  # Airflow 3
    from airflow.sdk import DAG, CronTriggerTimetable
except ImportError:  # Airflow 2.11, with apache-airflow-providers-standard
    from airflow import DAG
    from airflow.timetables.trigger import CronTriggerTimetable

PROPEL_BIN = "{{ var.value.get('propel_bin', '${PROPEL_BIN:-propel}') }}"
PROPEL_JOB = "{{ var.value.get('propel_job', '${PROPEL_JOB:-/etc/propel/job.toml}') }}"
SHARDS = int(os.environ.get("PROPEL_SHARDS", "4"))

RUN = f'"{PROPEL_BIN}" run --job "{PROPEL_JOB}"' + " --as-of {{ ds }} --log-format json"

with DAG(
    dag_id="propel_sharded",
    description=f"propel run --shard I/{SHARDS} (mapped), then --merge-shards {SHARDS}",
    schedule=CronTriggerTimetable("0 3 * * *", timezone="UTC"),
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),
    catchup=True,
    max_active_runs=1,  # nights in order: a night's merge commits the state the next reads
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=3),
    },
    tags=["propel"],
    doc_md=__doc__,
):
    shards = BashOperator.partial(task_id="propel_shard").expand(
        bash_command=[f"{RUN} --shard {i}/{SHARDS}" for i in range(SHARDS)]
    )
    merge = BashOperator(
        task_id="propel_merge",
        bash_command=f"{RUN} --merge-shards {SHARDS}",
        skip_on_exit_code=4,  # model refused: skip, don't retry
    )
    shards >> merge
