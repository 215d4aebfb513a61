"""Serving the dashboards: a production WSGI server (waitress) while a timer keeps the rollups
current, unless `gpuledger jobs` keeps them (one rollup builder, never two).

Part of the command line, used by `gpuledger dashboard` and `gpuledger demo`.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from gpuledger.cli_args import _settings
from gpuledger.config import Config, ConfigError

DASHBOARD_ROLLUP_EVERY_S = 300.0
# $ per GPU-hour for the simulated fleet's models (illustrative on-demand-like prices).


def rollups_line(dates: int, rebuilt: int) -> str:
    """'rollups: 2 dates up to date (1 rebuilt now)': 0 rebuilt on a new lake is not a failure."""
    noun = "date" if dates == 1 else "dates"
    return f"rollups: {dates} {noun} up to date ({rebuilt} rebuilt now, {dates - rebuilt} already current)"


def _serve_dashboards(cfg: Config, port: int, rollup_every_s: float) -> None:
    """Rollups brought up to date, then the dashboards served while a timer keeps the rollups current."""
    from dashboards.app import create_app, dashboard_data
    from dashboards.auth import AuthConfigError
    from warehouse.rollups import keep_current

    settings = _settings(cfg)
    acct = settings.accounting(cfg.lake.path)
    try:
        stats = acct.update()
        print(rollups_line(stats.dates, stats.rebuilt), file=sys.stderr)
    finally:
        acct.close()
    try:
        app = create_app(cfg)
    except (AuthConfigError, ValueError) as exc:
        raise ConfigError(f"config error: {exc}") from exc
    data = dashboard_data(app)
    stop = threading.Event()

    def refresh_rollups() -> None:
        # Rollups of changed dates only; then the page caches are filled again (a quick next load).
        first = True
        while first or not stop.wait(rollup_every_s):
            first = False
            a = settings.accounting(cfg.lake.path)
            try:
                keep_current(a, 2 * max(rollup_every_s, cfg.jobs.rollups_minutes * 60))
                data.warm()
            except Exception as exc:  # a bad file must not stop the dashboards; say it and go on
                logging.getLogger("gpuledger.dashboard").warning("rollup update failed: %s", exc)
            finally:
                a.close()

    threading.Thread(target=refresh_rollups, name="rollups", daemon=True).start()
    server = wsgi_server(app.server, cfg.dashboard.host, port, threads=cfg.dashboard.connections)
    print(
        f"dashboard on http://{cfg.dashboard.host}:{server.effective_port}/ (Ctrl-C stops)", file=sys.stderr
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.close()


def wsgi_server(wsgi_app: Any, host: str, port: int, threads: int) -> Any:
    """The dashboards behind waitress, a production WSGI server (not Flask's development server).

    Why waitress: pure Python (nothing to compile, installs wherever the rest does), runs on
    Linux, macOS and Windows, and serves from a thread pool, which suits the dashboards: their
    work happens in DuckDB, which releases the GIL, and they share per-process caches and
    connections that forked workers (gunicorn) would each hold a copy of. One thread per DuckDB
    connection (dashboard.connections): a request never waits for a connection another holds.
    Port 0 takes any free port; `effective_port` says which.
    """
    from waitress import create_server

    return create_server(wsgi_app, host=host, port=port, threads=threads, ident="gpuledger")
