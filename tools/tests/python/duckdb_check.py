"""Reads the lander's Hive-layout Parquet with DuckDB and prints what it finds as JSON.

usage: duckdb_check.py OUT   (reads OUT/payments/dt=*/hr=*/*.parquet)
"""
import json
import sys

import duckdb

out = sys.argv[1]
con = duckdb.connect()
source = f"read_parquet('{out}/payments/*/*/*.parquet', hive_partitioning = true)"
rows, distinct_offsets = con.execute(
    f'select count(*), count(distinct (partition, "offset")) from {source}'
).fetchone()
typed_null_rows = con.execute(
    f"select count(*) from {source} where amount_cents is null and ts is null and user_id is null"
).fetchone()[0]
amount_sum = con.execute(f"select coalesce(sum(amount_cents), 0) from {source}").fetchone()[0]
# Event time is the typed ts, else the record timestamp; compare its UTC day and hour
# with the dt=/hr= directory the row was found in.
misplaced_hours = con.execute(
    f"""
    select count(*) from (
        select epoch_ms(coalesce(ts, "timestamp")) as event_ms, dt, hr from {source}
    )
    where date_diff('day', date '1970-01-01', cast(dt as date)) <> event_ms // 86400000
       or cast(hr as integer) <> (event_ms // 3600000) % 24
    """
).fetchone()[0]
max_offset = {
    str(p): m
    for p, m in con.execute(f'select partition, max("offset") from {source} group by partition').fetchall()
}
print(
    json.dumps(
        {
            "rows": rows,
            "distinct_offsets": distinct_offsets,
            "typed_null_rows": typed_null_rows,
            "amount_sum": int(amount_sum),
            "misplaced_hours": misplaced_hours,
            "max_offset": max_offset,
        }
    )
)
