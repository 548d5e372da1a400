"""One loader for the services' settings: environment variables and CLI flags, cast by type.

Each service describes its settings as one frozen (or plain) dataclass; :class:`EnvLoader`
reads a field from ``<PREFIX><FIELD>`` (or the names the service lists for it, such as the
seed's ``A2F_MODEL_DATA_PATH``) and casts the text by the field's declared type. Nothing is
read at import time.
"""

from a2f_config.loader import ConfigError, EnvLoader, cast, field_types, parse_bool

__all__ = ["ConfigError", "EnvLoader", "cast", "field_types", "parse_bool"]
