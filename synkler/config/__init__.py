"""Find, read and check synkler's YAML configuration file.

- ``keys``: the key table (every setting described once: its check, default, roles) and Config;
- ``values``: the checkers of single values; ``alerts``: the nested `alerts` setting;
- ``parse``: a parsed document checked against the table, and the rules between keys;
- ``load``: the search order and reading the file (the one place that reads it).

Every bad input ends up as a single ``ConfigError`` naming the file and the
key, because the agents run unattended and an operator reading a log line needs
to know exactly which line of which file to fix - not a Python traceback.
"""

from __future__ import annotations

from .alerts import Alerts, CommandChannel, EmailChannel, WebhookChannel
from .keys import KEYS, MODES, Config, ignored_keys, value_problem
from .load import (
    DEFAULT_SEARCH,
    ENV_VAR,
    NotYamlMapping,
    config_from_text,
    find_config,
    load_config,
    read_text,
    read_yaml,
)
from .parse import PASSWORD_ENV_VAR, parse_config

__all__ = [
    "DEFAULT_SEARCH",
    "ENV_VAR",
    "KEYS",
    "MODES",
    "PASSWORD_ENV_VAR",
    "Alerts",
    "CommandChannel",
    "Config",
    "EmailChannel",
    "NotYamlMapping",
    "WebhookChannel",
    "config_from_text",
    "find_config",
    "ignored_keys",
    "load_config",
    "parse_config",
    "read_text",
    "read_yaml",
    "value_problem",
]
