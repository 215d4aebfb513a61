"""The README's configuration example is a config the program accepts (docs that stay true)."""

from __future__ import annotations

import re
from pathlib import Path

from gpuledger.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_example_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no ```toml block"
    cfg_file = tmp_path / "gpuledger.toml"
    cfg_file.write_text(blocks[0])
    cfg = load_config(cfg_file, env={})
    assert cfg.pricing.book and cfg.tenants.rules
    assert (cfg.jobs.close_day, cfg.jobs.close_time) == (1, "02:00")
    assert cfg.collector.resolver == "kubernetes"
