"""Recomputes the `hourly` or `daily` job with DuckDB SQL over the landed Parquet and
compares it with corelog's output; prints the comparison as JSON.

usage: rollup_check.py hourly|daily LANDED OUT
Counts, sums, min and max must match exactly; p50/p99 within the sketch's 1% relative
accuracy of quantile_disc (nearest rank, ceil(q*n)).
"""
import json
import sys

import duckdb

job, landed, out = sys.argv[1], sys.argv[2], sys.argv[3]
period_ms, time_column, files = {
    "hourly": (3600000, "hour", f"{out}/hourly/*/*/*.parquet"),
    "daily": (86400000, "day", f"{out}/daily/*/*.parquet"),
}[job]
con = duckdb.connect()
con.execute(
    f"""
    create table expected as
    select epoch_ms(coalesce(ts, "timestamp")) // {period_ms} as hour, merchant_id, country,
           count(*) as n, sum(amount_cents) as s, min(amount_cents) as lo, max(amount_cents) as hi,
           quantile_disc(amount_cents, 0.5) as p50, quantile_disc(amount_cents, 0.99) as p99
    from read_parquet('{landed}/payments/*/*/*.parquet', hive_partitioning = true)
    where merchant_id is not null and country is not null and amount_cents is not null
    group by all
    """
)
con.execute(
    f"""
    create table ours as
    select epoch_ms({time_column}) // {period_ms} as hour, merchant_id, country, "count" as n,
           sum_amount_cents as s, min_amount_cents as lo, max_amount_cents as hi,
           p50_amount_cents as p50, p99_amount_cents as p99
    from read_parquet('{files}')
    """
)
row = con.execute(
    """
    select
      (select count(*) from expected),
      (select count(*) from ours),
      (select coalesce(sum(n), 0) from expected),
      count(*) filter (where e.n is distinct from o.n or e.s is distinct from o.s
                         or e.lo is distinct from o.lo or e.hi is distinct from o.hi),
      count(*) filter (where o.p50 is null or abs(o.p50 - e.p50) > 0.01 * abs(e.p50) + 1e-9),
      count(*) filter (where o.p99 is null or abs(o.p99 - e.p99) > 0.01 * abs(e.p99) + 1e-9)
    from expected e full outer join ours o using (hour, merchant_id, country)
    """
).fetchone()
print(
    json.dumps(
        {
            "expected_groups": row[0],
            "our_groups": row[1],
            "expected_rows": int(row[2]),
            "exact_mismatches": row[3],
            "p50_outside_accuracy": row[4],
            "p99_outside_accuracy": row[5],
        }
    )
)
