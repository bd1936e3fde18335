"""Errors a user can fix. Scripts print them without a traceback and exit with status 2."""


class UserError(Exception):
  """Bad input: a flag, a config field, a missing or corrupted file, a mismatched model."""


class ConfigError(UserError):
  """A config field is unknown, of the wrong type, or has an impossible value."""


class DataError(UserError):
  """An input file is missing, truncated or corrupted, or does not match what was expected."""
