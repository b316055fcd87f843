"""The documentation keeps up with the code: every setting and every CLI verb is documented."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from lightabaco.cli import commands as cli
from lightabaco.config import ENV_PREFIX, Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_in_the_configuration_reference():
    text = (DOCS / "configuration.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`{ENV_PREFIX}{f.name.upper()}`" not in text]
    assert not missing, f"document these settings in docs/configuration.md: {missing}"


def test_every_cli_verb_is_in_the_cli_page():
    text = (DOCS / "cli.md").read_text()
    parser = cli.build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    missing = [v for v in verbs if not re.search(rf"lightabaco {v}\b", text)]
    assert not missing, f"document these verbs in docs/cli.md: {missing}"
