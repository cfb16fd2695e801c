#!/bin/sh
# Written by gridship. Apptainer's "run" action: load the environment, then
# hand over to a SCIF app's runscript, the image's runscript, or /bin/sh.
for gridship_env in /.singularity.d/env/*.sh; do
    if [ -f "$gridship_env" ]; then
        . "$gridship_env"
    fi
done
unset gridship_env
if [ -n "${SINGULARITY_APPNAME:-}" ]; then
    for gridship_run in "/scif/apps/${SINGULARITY_APPNAME}/scif/runscript" /scif/apps/singularity/scif/runscript; do
        if [ -x "$gridship_run" ]; then
            exec "$gridship_run" "$@"
        fi
    done
    echo "No Apptainer runscript for contained app: ${SINGULARITY_APPNAME}"
    exit 1
fi
if [ -x /.singularity.d/runscript ]; then
    exec /.singularity.d/runscript "$@"
fi
echo "No Apptainer runscript found, executing /bin/sh"
exec /bin/sh "$@"
