"""What the `gpuledger` commands share: the config with command-line overrides, arguments checked
before anything runs (a month, a start time, a lake to read), and the money settings of a config.

A typo must name itself in one line, never end in a traceback or write anything.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gpuledger.config import Config, ConfigError, load_config


def _load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    if getattr(args, "kafka", None):
        cfg.kafka.bootstrap_servers = args.kafka
    if getattr(args, "lake", None):
        cfg.lake.path = args.lake
    args.bootstrap_used = cfg.kafka.bootstrap_servers  # what a Kafka error message names
    return cfg


MONTH_RE = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


START_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def _month(command: str, value: str) -> str:
    """--month checked before anything runs: a typo must name itself, not end in a traceback."""
    if not MONTH_RE.fullmatch(value):
        raise ConfigError(
            f"gpuledger {command}: --month {value!r}: "
            f"expected YYYY-MM with a month from 01 to 12 (e.g. 2025-11)"
        )
    return value


def _start(command: str, value: str | None, span_s: float) -> datetime | None:
    """--start YYYY-MM-DDTHH:MM (UTC): the first tick of a replayed window that must lie in the past,
    so that what it writes never overlaps the live clock (and a past month can be closed)."""
    if value is None:
        return None
    try:
        if not START_RE.fullmatch(value):
            raise ValueError(value)
        start = datetime.strptime(value, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(
            f"gpuledger {command}: --start {value!r}: "
            f"expected a UTC time YYYY-MM-DDTHH:MM (e.g. 2025-11-30T18:00)"
        ) from None
    end = start + timedelta(seconds=span_s)
    now = datetime.now(UTC)
    if end > now:
        raise ConfigError(
            f"gpuledger {command}: --start {value} with --until {span_s / 3600:g}h ends "
            f"{end:%Y-%m-%dT%H:%M} UTC, after now ({now:%Y-%m-%dT%H:%M} UTC): expected a window in the past"
        )
    return start


def _lake_to_read(cfg: Config, command: str) -> Path | str:
    """The lake a reading command works on; a missing one is a mistake, never created empty.
    An object-store lake (s3://) is given back as its location, checked by listing it."""
    from warehouse.lake import Lake, is_remote

    if is_remote(cfg.lake.path):
        lake = Lake(cfg.lake.path)
        if not lake.list_dirs(lake.root):
            raise ConfigError(f"gpuledger {command}: lake {cfg.lake.path} holds nothing (no objects there)")
        return cfg.lake.path
    path = Path(cfg.lake.path)
    if not path.is_dir():
        raise ConfigError(
            f"gpuledger {command}: lake {path} does not exist: give --lake DIR or set lake.path "
            f"(gpuledger demo and gpuledger ingest create one)"
        )
    return path


def _check_price_book(cfg: Config, lake: Path | str, dates: list[str] | None) -> None:
    """An empty price book names the models it would have to price (the book's own check names
    a model it lacks only when it meets one, and not at all when it is empty)."""
    from warehouse.errors import PriceError
    from warehouse.preflight import unpriced_models

    if cfg.pricing.book:
        return
    missing = unpriced_models(lake, cfg.pricing.book, dates)
    if missing:
        raise PriceError(
            f"no price book: pricing.book is empty, so GPU model(s) {', '.join(repr(m) for m in missing)} "
            f'have no price; add [pricing] book = [{{ model = ..., gpu_hour = "2.50", from = "2025-01-01" }}]'
        )


REPORT_FORMATS = ("html", "pdf", "csv", "focus")


def _settings(cfg: Config) -> Any:
    from warehouse.close import CloseSettings
    from warehouse.pricing import PriceError

    try:
        return CloseSettings.from_config(cfg)
    except PriceError as exc:
        raise ConfigError(f"config error: {exc}") from exc
