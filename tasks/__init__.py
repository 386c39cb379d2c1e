"""pod-cycle: run a chess-bot training cycle on RunPod GPU pods (or the built-in local RunPod).

Settings, highest first: flag → environment → .env → invoke.yaml (section `podcycle:`) →
the defaults below. See README.md and .env.example.
"""

import sys
from pathlib import Path

from invoke import Collection

from podcycle import config_files
from podcycle.cli import (
    quiet_broken_pipe,
    refuse_a_deleted_working_folder,
    standard_streams,
)
from podcycle.config import DEFAULTS, register_configured_secrets
from podcycle.redact import debugging, install_logging_filter, register_command_line
from tasks import (
    api,
    check,
    cluster,
    cycle,
    data,
    eval,
    gpu,
    image,
    local,
    pod,
    registry,
    runs,
    sweep,
    template,
    volume,
)

# Before anything opens a file that could take the number of a closed stdout or stderr.
standard_streams()
# The .env and every relative path are read from the working folder: one deleted under the
# shell (`rm -r` of the folder it is in) was a FileNotFoundError traceback.
refuse_a_deleted_working_folder()
# Before Invoke parses the task's flags: its --debug lines print each value (--api-key too).
register_command_line(sys.argv)
if debugging(sys.argv):
    # And every key this machine is configured with: a pasted one is among the values.
    register_configured_secrets()
    install_logging_filter()

ns = Collection()
for module in (api, template, gpu, pod, volume, registry, cluster, cycle, data, local, image,
               check, eval, runs, sweep):
    ns.add_collection(Collection.from_module(module))
ns.configure({"podcycle": DEFAULTS})

# Invoke reads invoke.yaml and its kin itself: a broken one is a line naming the file, not a
# traceback that prints the merged settings.
config_files.install(Path(__file__).resolve().parent.parent, DEFAULTS)
# `inv --list | head`: the reader closing the pipe is not an error worth a traceback.
quiet_broken_pipe()
