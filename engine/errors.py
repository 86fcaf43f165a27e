"""Errors a user can cause: they end a command with one clear message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a path, a file, a value, a model too big.

    ``message`` names the thing that is wrong; ``advice`` says what to do.
    """

    exit_code = 2

    def __init__(self, message: str, advice: str = "", code: str = "bad_input") -> None:
        super().__init__(message)
        self.message = message
        self.advice = advice
        self.code = code

    def __str__(self) -> str:
        return f"{self.message}\n  → {self.advice}" if self.advice else self.message

    @property
    def full_message(self) -> str:
        """The message with every detail (a DataError's rows), without the advice."""
        return self.message


class ConfigError(UserError):
    """A job file key with an unknown name or a bad value."""

    def __init__(self, key: str, message: str, advice: str = "") -> None:
        super().__init__(f"{key}: {message}", advice, code="bad_job")
        self.key = key


class DataError(UserError):
    """A dataset that cannot be used; ``problems`` lists each with its row or line."""

    def __init__(self, message: str, problems: list[str] | None = None, advice: str = "") -> None:
        super().__init__(message, advice, code="bad_data")
        self.problems = problems or []

    def __str__(self) -> str:
        return f"{self.full_message}\n  → {self.advice}" if self.advice else self.full_message

    @property
    def full_message(self) -> str:
        lines = [self.message, *(f"  - {p}" for p in self.problems[:50])]
        if len(self.problems) > 50:
            lines.append(f"  … and {len(self.problems) - 50} more")
        return "\n".join(lines)
