"""Expected failures: each says what happened and what to do next."""

from __future__ import annotations


class PodCycleError(Exception):
    """An expected failure with a one-line remedy; tasks turn it into `Exit(..., code)`."""

    exit_code = 1

    def __init__(self, message: str, remedy: str = "", *, code: int | None = None) -> None:
        from podcycle.redact import redact

        self.message = redact(message)
        self.remedy = redact(remedy)
        if code is not None:
            self.exit_code = code
        super().__init__(self.render())

    def render(self) -> str:
        if self.remedy:
            return f"{self.message}\n  → {self.remedy}"
        return self.message


class ConfigError(PodCycleError):
    """A setting is missing or invalid."""

    exit_code = 2


class DatasetError(PodCycleError):
    """The dataset folder is not valid; the message names file:line."""

    exit_code = 3


class StepFailed(PodCycleError):
    """A step of the training cycle failed (podcycle.cycle): its message says which."""


class StepRefused(StepFailed):
    """A step refused a flag its run cannot take, before it did anything (nothing sent to
    RunPod or the pod): the run's record stays as it was. Recorded as the step's failure, a
    refused `cycle.start` turned a finished run into a failed one, and the next
    `full-smoke --resume` booted its stopped pod again to redo that start."""

    exit_code = 2


class OutputClosed(KeyboardInterrupt):
    """The reader of the tool's output went away while a step streamed to it (`inv ... |
    head` that has read enough): the end a SIGPIPE gives a pipeline's writer, so an
    interruption (the pod stopped, --resume continues), never a broken SSH connection."""

    reason = "the reader of the output went away"
    message = f"{reason} (a closed pipe, e.g. | head): the step was interrupted"

