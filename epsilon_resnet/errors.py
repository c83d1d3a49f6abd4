"""The errors a user can act on. Every command line catches UserError and prints its message
(which says what is wrong and what was expected) instead of a traceback."""


class UserError(Exception):
    """Bad input or a state the user must fix: a missing folder, a step with no checkpoint, ..."""


class FileError(UserError, ValueError):
    """A file that is missing, unreadable, or not in the format its name promises (YAML, ...)."""


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema; the message says where and why."""


class DataError(UserError, ValueError):
    """Dataset files that are missing or malformed, or dataset options that do not apply."""


class RunError(UserError, RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""


class CheckpointError(RunError):
    """A checkpoint that is missing, damaged or cannot be written."""


class WeightsDoNotFit(CheckpointError):
    """A checkpoint whose weights are not those of the network asked for (another depth, a plain run)."""


class Interrupted(RunError):
    """A run stopped on SIGINT (Ctrl-C) or SIGTERM after keeping its last complete checkpoint."""


class CompressionError(UserError, ValueError):
    """A run, step, .cfg or weight file that cannot be compressed or loaded; the message says why."""
