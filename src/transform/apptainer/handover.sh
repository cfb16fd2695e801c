#!/bin/sh
# Written by gridship. Apptainer's "@ACTION@" action: load the environment, then
# @SUMMARY@
for gridship_env in /.singularity.d/env/*.sh; do
    if [ -f "$gridship_env" ]; then
        . "$gridship_env"
    fi
done
unset gridship_env
if [ -n "${SINGULARITY_APPNAME:-}" ]; then
    for gridship_@ACTION@ in "/scif/apps/${SINGULARITY_APPNAME}/scif/@SCIF@" /scif/apps/singularity/scif/@SCIF@; do
        if [ -x "$gridship_@ACTION@" ]; then
            exec "$gridship_@ACTION@" "$@"
        fi
    done
    echo "@NO_APP@: ${SINGULARITY_APPNAME}"
    exit 1
fi
if [ -x /.singularity.d/@SCIF@ ]; then
    exec /.singularity.d/@SCIF@ "$@"
fi
echo "@NONE@"
exec @FALLBACK@
