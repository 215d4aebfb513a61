"""A lake as the product reads it, with named relations for tests to query.

Not a second implementation: every relation here comes from the product's own path (staging layer,
rules, rollups, Accounting), so tests that check ingest, the CLI or the dashboards against "what
the lake holds" see exactly what the dashboards, reports and the ledger see. The ``raw_*`` views
are every file on disk, committed or not (to show what the staging layer leaves out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warehouse.accounting import Accounting
from warehouse.lake import Lake
from warehouse.rules import tenant_sql
from warehouse.sql import read_parquet
from warehouse.staging import committed_files, first_batch_ticks_sql, samples_sql, slice_ticks_sql


class LakeViews:
    """The product's own path over a lake, with the relations these tests read:

    - ``slice_acct`` / ``slice_share``: committed slice ticks with share, reserved and used seconds
      (as doubles), the GPU tick's total share, tenant (staging.slice_ticks_sql);
    - ``tick``, ``gpu_sample``, ``slice_sample``, ``process_sample``: committed rows, each tick once;
    - ``gpu_acct``: per GPU and hour from the rollups (capacity, reserved, used, unallocated seconds,
      slice ticks as ``n_slices``, the largest total share of its ticks as ``sum_share``);
    - ``summary()`` and ``fleet_hourly()``: Accounting's measures.
    """

    def __init__(
        self, lake: Lake | Path, rules: list[dict[str, Any]] = (), default_tenant: str = "unassigned"
    ):
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
        self.tenant = tenant_sql(rules, default_tenant)
        self.acct = Accounting(self.lake, tenant_rules=rules, default_tenant=default_tenant)
        self.con = self.acct.con
        self.refresh()

    def dates(self) -> list[str]:
        return self.acct.rollups.sample_dates()

    def refresh(self) -> None:
        self.acct.update()
        dates = self.dates()
        empty = {
            "tick": "SELECT NULL::VARCHAR AS node, NULL::VARCHAR AS boot_id, NULL::BIGINT AS seq, "
            "NULL::BIGINT AS batch WHERE false",
            "slice": "SELECT NULL::VARCHAR AS slice_id, NULL::VARCHAR AS gpu_uuid, NULL::BIGINT AS batch "
            "WHERE false",
        }
        for kind in ("tick", "gpu", "slice", "process"):  # every file on disk, committed or not
            files = sorted(str(p) for p in self.lake.table_dir(kind).glob("date=*/*.parquet"))
            q = f"SELECT * FROM {read_parquet(files)}" if files else empty.get(kind, empty["slice"])
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW raw_{kind} AS {q}")
        tick_files = committed_files(self.lake, "tick", dates)
        src = first_batch_ticks_sql(read_parquet(tick_files)) if tick_files else empty["tick"]
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW tick AS {src}")
        for kind in ("gpu", "slice", "process"):
            rel = samples_sql(self.lake, kind, dates)
            q = f"SELECT * FROM {rel}" if rel else empty.get(kind, "SELECT NULL::VARCHAR AS uuid WHERE false")
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW {kind}_sample AS {q}")
        dlq = sorted(str(p) for p in (self.lake.root / "dlq").glob("date=*/*.parquet"))
        q = f"SELECT * FROM {read_parquet(dlq)}" if dlq else "SELECT NULL::VARCHAR AS topic WHERE false"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW raw_dlq AS {q}")
        self.con.execute(
            """
            CREATE OR REPLACE TEMP VIEW dlq AS SELECT * FROM raw_dlq
            QUALIFY row_number() OVER (PARTITION BY topic, "partition", "offset" ORDER BY received_at) = 1"""
            if dlq
            else "CREATE OR REPLACE TEMP VIEW dlq AS SELECT * FROM raw_dlq"
        )
        staged = slice_ticks_sql(self.lake, dates, tenant=self.tenant)
        if staged is None:
            q = "SELECT NULL::VARCHAR AS slice_id, NULL::VARCHAR AS tenant WHERE false"
        else:
            q = f"""SELECT * REPLACE (CAST(reserved_s AS DOUBLE) AS reserved_s,
                                      CAST(used_s AS DOUBLE) AS used_s) FROM {staged}"""
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW slice_acct AS {q}")
        self.con.execute("CREATE OR REPLACE TEMP VIEW slice_share AS SELECT * FROM slice_acct")
        total_share = (
            "(SELECT max(s.gpu_sum_share) FROM slice_acct s WHERE s.gpu_uuid = g.gpu_uuid)"
            if staged
            else "NULL"
        )
        self.con.execute(f"""
            CREATE OR REPLACE TEMP VIEW gpu_acct AS
            SELECT gpu_uuid AS uuid, model, hour, CAST(sum(capacity_s) AS DOUBLE) AS capacity_s,
                   CAST(sum(reserved_s) AS DOUBLE) AS reserved_s, CAST(sum(used_s) AS DOUBLE) AS used_s,
                   CAST(sum(unallocated_s) AS DOUBLE) AS unallocated_s, sum(slice_ticks) AS n_slices,
                   coalesce({total_share}, 0.0) AS sum_share
            FROM gpu_hourly g GROUP BY gpu_uuid, model, hour""")

    def sql(self, query: str) -> Any:
        self.refresh()  # new files are picked up, as every reader of the lake does
        return self.con.sql(query)

    def summary(self) -> dict[str, Any]:
        return self.acct.summary()

    def fleet_hourly(self) -> list[dict[str, Any]]:
        return [
            {"hour" if k == "period" else k: v for k, v in r.items()}
            for r in self.acct.measures(["cluster", "model"], grain="hour")
        ]

    def close(self) -> None:
        self.acct.close()
