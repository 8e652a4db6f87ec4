"""The error the command line turns into one ``error:`` line and exit code 2.

A leaf module (it imports nothing from mixjax), so that every layer that checks
user input (config validation, Methods, the loop) can raise it without an
import circle.
"""


class ConfigError(ValueError):
    """A configuration key is unknown, mistyped or has an impossible value."""
