#!/bin/sh
# Written by gridship. Sourced last among the image's scripts: the directory
# Apptainer binds host libraries into (--nv GPU drivers) goes at the end of
# LD_LIBRARY_PATH, and a prompt is set if none is.
if [ -z "${LD_LIBRARY_PATH:-}" ]; then
    LD_LIBRARY_PATH=/.singularity.d/libs
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi
if [ -z "${PS1:-}" ]; then
    PS1="Apptainer> "
fi
export LD_LIBRARY_PATH PS1
