"""Errors that reach users: one line naming the bad value and what is allowed."""


class SpecError(ValueError):
    """A recipe, step or option the user gave is not valid.

    The message is one line: what was wrong, the bad value, what is allowed.
    The CLI prints it without a traceback and exits with status 2.
    """


def choice_error(what: str, value, allowed) -> SpecError:
    """SpecError for a name that is not one of `allowed`."""
    return SpecError(f"unknown {what} {value!r}; allowed: {', '.join(sorted(map(str, allowed)))}")


def require(condition: bool, message: str) -> None:
    """SpecError(message) unless `condition`: a check that reads as the rule it enforces."""
    if not condition:
        raise SpecError(message)
