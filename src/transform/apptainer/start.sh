#!/bin/sh
# Written by gridship. Apptainer's "start" action (instances): wake the
# stopped init process, load the environment, run the startscript.
kill -CONT 1
for gridship_env in /.singularity.d/env/*.sh; do
    if [ -f "$gridship_env" ]; then
        . "$gridship_env"
    fi
done
unset gridship_env
if [ -x /.singularity.d/startscript ]; then
    exec /.singularity.d/startscript
fi
