"""The one exception type for a mistake the user can act on: a bad file, flag or setting.

The CLI prints it as one line (`nanobias <command>: error: ...`) and exits non-zero; `--debug` or
NANOBIAS_DEBUG=1 shows the traceback instead. Its message names the file, line, field or flag,
what was expected, and what to do. `check` is how every config dataclass rejects a bad setting.
"""


class UserError(ValueError):
    """A ValueError, so that code checking for bad values catches it too."""


class TrainingDiverged(UserError):
    """A non-finite loss, reward or logit: the message names the quantity, the step and the likely flags."""


def check(cfg, checks: dict[str, bool], rule: str) -> None:
    """Raise ValueError naming the first setting of `cfg` (a config dataclass) whose check failed, and the rule."""
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"bad setting {type(cfg).__name__}.{bad[0]}={getattr(cfg, bad[0])!r} ({rule})")
