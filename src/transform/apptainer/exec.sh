#!/bin/sh
# Written by gridship. Apptainer's "exec" action: load the image's
# environment scripts in order, then run the command given.
for gridship_env in /.singularity.d/env/*.sh; do
    if [ -f "$gridship_env" ]; then
        . "$gridship_env"
    fi
done
unset gridship_env
exec "$@"
