"""Times DuckDB on the same Parquet as a propel run: the hand-written features at the run's
cutoffs (bench/features.sql), and a bare scan of the columns propel reads (the floor).

    python bench/duckdb_features.py EVENTS_DIR RUN_DIR   -> one JSON line on stdout
"""

import json
import resource
import sys
import time
from pathlib import Path

import duckdb

# The Lake Loader columns propel's ingest reads (src/ingest.rs).
COLUMNS = [
    "event_id", "collector_tstamp", "derived_tstamp", "dvce_created_tstamp", "dvce_sent_tstamp",
    "event", "event_name", "user_id", "domain_userid", "network_userid", "domain_sessionid",
    "page_url", "page_urlpath", "page_referrer", "refr_medium", "refr_source", "mkt_medium",
    "mkt_source", "mkt_campaign", "useragent", "tr_orderid", "tr_total", "tr_tax", "tr_shipping",
    "ti_orderid", "ti_sku", "ti_name", "ti_category", "ti_price", "ti_quantity",
    "unstruct_event_com_snowplowanalytics_snowplow_add_to_cart_1",
    "unstruct_event_com_snowplowanalytics_snowplow_remove_from_cart_1",
    "unstruct_event_com_snowplowanalytics_snowplow_site_search_1",
    "unstruct_event_com_snowplowanalytics_snowplow_consent_preferences_1",
    "contexts_com_snowplowanalytics_snowplow_ecommerce_transaction_1",
]


def main() -> None:
    events, run = Path(sys.argv[1]), Path(sys.argv[2])
    glob = str(events / "**" / "*.parquet")
    cutoffs = json.loads((run / "metrics.json").read_text())["cutoffs"]
    dates = cutoffs["training"] + [cutoffs["validation"], cutoffs["scoring"]]
    con = duckdb.connect()
    con.execute("SET threads = 2")
    start = time.perf_counter()
    con.execute(
        "CREATE TEMP TABLE scan AS SELECT "
        + ", ".join(COLUMNS)
        + " FROM read_parquet(?, hive_partitioning = true)",
        [glob],
    )
    scan = time.perf_counter() - start
    con.execute("DROP TABLE scan")
    con.execute("CREATE TEMP TABLE cutoffs (cutoff TIMESTAMPTZ)")
    con.executemany("INSERT INTO cutoffs VALUES (?::TIMESTAMPTZ)", [[d + " 00:00:00+00"] for d in dates])
    start = time.perf_counter()
    rows = None
    sql = "\n".join(
        line
        for line in (Path(__file__).parent / "features.sql").read_text().splitlines()
        if not line.strip().startswith("--")
    ).replace("$EVENTS", glob)
    for statement in sql.split(";"):
        if statement.strip():
            result = con.execute(statement).fetchall()
            rows = result[0][0] if result and result[0] else rows
    features = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"scan_s": scan, "features_s": features, "feature_rows": rows,
                      "cutoffs": len(dates), "peak_rss_mib": peak, "duckdb": duckdb.__version__}))


if __name__ == "__main__":
    main()
