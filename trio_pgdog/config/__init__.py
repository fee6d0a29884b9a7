"""Configuration: pgdog.toml and users.toml, loaded into frozen attrs models.

``load_config`` reads both files; ``load_config_text`` does the same from
strings (tests, the admin console). Any problem raises ``ConfigError`` with a
one-line message naming the file, the key and, where known, the line.
"""

from .errors import ConfigError
from .loader import load_config, load_config_text
from .models import AUTH_TYPES, POOLER_MODES, ROLES, Config, Database, General, User

__all__ = [
    "AUTH_TYPES",
    "POOLER_MODES",
    "ROLES",
    "Config",
    "ConfigError",
    "Database",
    "General",
    "User",
    "load_config",
    "load_config_text",
]
