#!/bin/sh
# Written by gridship. Apptainer's "shell" action: load the environment, then
# start $SINGULARITY_SHELL, else bash without rc files, else sh.
for gridship_env in /.singularity.d/env/*.sh; do
    if [ -f "$gridship_env" ]; then
        . "$gridship_env"
    fi
done
unset gridship_env
if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then
    # Unquoted on purpose: the variable may carry the shell's own options.
    exec $SINGULARITY_SHELL "$@"
    echo "ERROR: could not run the shell given by \$SINGULARITY_SHELL" 1>&2
    exit 1
fi
if [ -x /bin/bash ]; then
    SHELL=/bin/bash
    PS1="Apptainer ${APPTAINER_NAME:-}:\\w> "
    export SHELL PS1
    exec /bin/bash --norc "$@"
fi
if [ -x /bin/sh ]; then
    SHELL=/bin/sh
    export SHELL
    exec /bin/sh "$@"
fi
echo "ERROR: the image has no /bin/sh" 1>&2
exit 1
