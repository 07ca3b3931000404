-- The hand-written DuckDB equivalent of propel's core customer features, at the same
-- cutoffs, from the same Lake Loader Parquet: what a team would write instead of propel.
-- Identity is the cookie (domain_userid), deduplication by event_id (earliest collector
-- time), windows strictly before each cutoff. A subset of propel's 58 features (recency,
-- frequency, monetary value, cart, search, browsing), so DuckDB's time is a lower bound of
-- what the full feature set would cost it.
-- Parameters (set by bench/duckdb_features.py): the events glob replaces $EVENTS; the
-- cutoffs are in the `cutoffs` table.
CREATE TEMP TABLE events AS
SELECT * EXCLUDE (rn) FROM (
  SELECT
    event_id,
    coalesce(derived_tstamp, collector_tstamp) AS tstamp,
    domain_userid AS customer_id,
    domain_sessionid AS session_id,
    coalesce(event_name, event) AS name,
    tr_orderid,
    CAST(tr_total AS DOUBLE) AS tr_total,
    CAST(ti_price AS DOUBLE) * CAST(ti_quantity AS DOUBLE) AS line_value,
    unstruct_event_com_snowplowanalytics_snowplow_add_to_cart_1.unit_price
      * unstruct_event_com_snowplowanalytics_snowplow_add_to_cart_1.quantity AS cart_value,
    unstruct_event_com_snowplowanalytics_snowplow_site_search_1.total_results AS search_results,
    row_number() OVER (PARTITION BY event_id ORDER BY collector_tstamp) AS rn
  FROM read_parquet('$EVENTS', hive_partitioning = true)
) WHERE rn = 1;

CREATE TEMP TABLE features AS
SELECT
  c.cutoff,
  e.customer_id,
  date_diff('day', max(e.tstamp), c.cutoff) AS days_since_last_event,
  date_diff('day', min(e.tstamp), c.cutoff) AS tenure_days,
  date_diff('day', max(e.tstamp) FILTER (WHERE e.name = 'transaction'), c.cutoff) AS days_since_last_order,
  count(DISTINCT e.tr_orderid) FILTER (WHERE e.name = 'transaction') AS orders_all,
  count(DISTINCT e.tr_orderid) FILTER (WHERE e.name = 'transaction' AND e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS orders_30d,
  count(DISTINCT e.tr_orderid) FILTER (WHERE e.name = 'transaction' AND e.tstamp >= c.cutoff - INTERVAL 90 DAY) AS orders_90d,
  coalesce(sum(e.tr_total) FILTER (WHERE e.name = 'transaction'), 0) AS spend_all,
  coalesce(sum(e.tr_total) FILTER (WHERE e.name = 'transaction' AND e.tstamp >= c.cutoff - INTERVAL 90 DAY), 0) AS spend_90d,
  avg(e.tr_total) FILTER (WHERE e.name = 'transaction') AS avg_order_value,
  count(*) FILTER (WHERE e.name = 'page_view' AND e.tstamp >= c.cutoff - INTERVAL 7 DAY) AS page_views_7d,
  count(*) FILTER (WHERE e.name = 'page_view' AND e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS page_views_30d,
  count(DISTINCT e.session_id) FILTER (WHERE e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS sessions_30d,
  count(DISTINCT CAST(e.tstamp AS DATE)) FILTER (WHERE e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS active_days_30d,
  count(*) FILTER (WHERE e.name = 'add_to_cart' AND e.tstamp >= c.cutoff - INTERVAL 7 DAY) AS cart_adds_7d,
  count(*) FILTER (WHERE e.name = 'add_to_cart' AND e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS cart_adds_30d,
  coalesce(sum(e.cart_value) FILTER (WHERE e.name = 'add_to_cart' AND e.tstamp >= c.cutoff - INTERVAL 30 DAY), 0) AS cart_add_value_30d,
  count(*) FILTER (WHERE e.name = 'remove_from_cart' AND e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS cart_removes_30d,
  count(*) FILTER (WHERE e.name = 'site_search' AND e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS searches_30d,
  count(*) FILTER (WHERE e.name = 'site_search' AND e.search_results = 0 AND e.tstamp >= c.cutoff - INTERVAL 30 DAY) AS zero_result_searches_30d
FROM cutoffs c
JOIN events e ON e.tstamp < c.cutoff
GROUP BY c.cutoff, e.customer_id;

SELECT count(*) AS rows FROM features;
