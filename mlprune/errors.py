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


def shown(value, limit: int = 60) -> str:
    """repr(value) for a one-line message, cut short when long (a 100000-digit number stays one short line)."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr (sys.get_int_max_str_digits)
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"
