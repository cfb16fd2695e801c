#!/bin/sh
# Written by gridship. SCIF apps: when SINGULARITY_APPNAME names an app under
# /scif/apps, put its bin and lib first and load its own environment.
if [ -n "${SINGULARITY_APPNAME:-}" ]; then
    export SINGULARITY_APPNAME
    gridship_app="/scif/apps/${SINGULARITY_APPNAME}"
    if [ ! -d "$gridship_app/" ]; then
        echo "Could not locate the container application: ${SINGULARITY_APPNAME}"
        exit 1
    fi
    SCIF_APPS=/scif/apps
    SCIF_APPROOT="$gridship_app"
    export SCIF_APPROOT SCIF_APPS
    PATH="$gridship_app:/scif/apps/singularity:$PATH"
    if [ -d "$gridship_app/bin" ]; then
        PATH="$gridship_app/bin:$PATH"
    elif [ -d /scif/apps/singularity/bin ]; then
        PATH="/scif/apps/singularity/bin:$PATH"
    fi
    if [ -d "$gridship_app/lib" ]; then
        LD_LIBRARY_PATH="$gridship_app/lib:${LD_LIBRARY_PATH:-}"
        export LD_LIBRARY_PATH
    elif [ -d /scif/apps/singularity/lib ]; then
        LD_LIBRARY_PATH="/scif/apps/singularity/lib:${LD_LIBRARY_PATH:-}"
        export LD_LIBRARY_PATH
    fi
    for gridship_part in 01-base.sh 90-environment.sh; do
        if [ -f "$gridship_app/scif/env/$gridship_part" ]; then
            . "$gridship_app/scif/env/$gridship_part"
        elif [ -f "/scif/apps/singularity/scif/env/$gridship_part" ]; then
            . "/scif/apps/singularity/scif/env/$gridship_part"
        fi
    done
    unset gridship_app gridship_part
    export PATH
fi
