"""settings: the schema of a run's configuration (`Config`), its validation and its loading.

Owns every config key (type, default, range, one-line doc, live, secret: field metadata), reading
config files and `--set` overrides, and describing the keys to users (the `config.py` file, the
key listing). The lowest layer beside the top-level modules: it imports only `vsr_async.errors`
and the standard library, so every layer but `nn` (pure torch, no config) may import it. The
repository's top-level `config.py` is the user's run configuration file, never imported as code.
"""

from vsr_async.settings.loader import (
    USER_CONFIG,
    load_config,
    load_config_file,
    parse_overrides,
    user_config_file,
)
from vsr_async.settings.predecessor_keys import (
    PREDECESSOR_KEYS,
    Mapped,
    NoEffect,
    no_effect,
    no_effect_line,
    no_effect_lines,
    our_key,
)
from vsr_async.settings.schema import (
    Config,
    build_config,
    field_docs,
    field_names,
    field_types,
    live_keys,
    secret_keys,
)
from vsr_async.settings.values import describe_type

__all__ = [
    "PREDECESSOR_KEYS",
    "USER_CONFIG",
    "Config",
    "Mapped",
    "NoEffect",
    "build_config",
    "describe_type",
    "field_docs",
    "field_names",
    "field_types",
    "live_keys",
    "load_config",
    "load_config_file",
    "no_effect",
    "no_effect_line",
    "no_effect_lines",
    "our_key",
    "parse_overrides",
    "secret_keys",
    "user_config_file",
]
