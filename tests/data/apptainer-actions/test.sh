#!/bin/sh
# Written by gridship. Apptainer's "test" action: load the environment, then
# run a SCIF app's test, the image's /.singularity.d/test, or succeed.
for gridship_env in /.singularity.d/env/*.sh; do
    if [ -f "$gridship_env" ]; then
        . "$gridship_env"
    fi
done
unset gridship_env
if [ -n "${SINGULARITY_APPNAME:-}" ]; then
    for gridship_test in "/scif/apps/${SINGULARITY_APPNAME}/scif/test" /scif/apps/singularity/scif/test; do
        if [ -x "$gridship_test" ]; then
            exec "$gridship_test" "$@"
        fi
    done
    echo "No tests for contained app: ${SINGULARITY_APPNAME}"
    exit 1
fi
if [ -x /.singularity.d/test ]; then
    exec /.singularity.d/test "$@"
fi
echo "No test found in container, executing /bin/sh -c true"
exec /bin/sh -c true
