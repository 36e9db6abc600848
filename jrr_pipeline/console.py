"""The console logger of the code location's runs: Dagster's events as short lines on stderr.

Dagster's own console logger prints every failure with the chain of exceptions and their stack
traces (three of them for one bad input line). This one prints one line per event (the event's
first line, without the job name and run id that every line repeats; no notices of the steps
skipped below a failure) unless ``verbose`` is set,
which prints Dagster's full text. ``jrr run --verbose`` sets it; ``dagster dev`` keeps the
default (verbose), so the UI's terminal still shows stack traces.
"""

from __future__ import annotations

import logging
import re
import sys

from dagster import Field, InitLoggerContext, logger

# "jrr_pipeline_job - <run id> - [<pid> - ]": Dagster's prefix of every event line
_PREFIX = re.compile(r"^\S+ - [0-9a-f]{8}-[0-9a-f-]{27} - (?:\d+ - )?")


_SKIPPED = re.compile(r"Dependencies for step .* Not executing\.$")


class _OneLine(logging.Filter):
    """Keeps the first line of a record's message, without Dagster's job / run id prefix, and
    drops the notices of steps skipped below a failure (the run's failure line names it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        first = _PREFIX.sub("", record.getMessage().strip().split("\n", 1)[0])
        record.msg, record.args = first, ()
        return not _SKIPPED.search(first)


@logger(
    config_schema={
        "log_level": Field(str, default_value="INFO", description="the logger's threshold"),
        "verbose": Field(bool, default_value=True,
                         description="Dagster's full event text (stack traces included)"),
    },
    description="Dagster events on stderr; one line each unless verbose",
)
def console_logger(init_context: InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    log = logging.Logger("jrr", logging.getLevelName(config["log_level"].upper()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    if not config["verbose"]:
        handler.addFilter(_OneLine())
    log.addHandler(handler)
    return log
