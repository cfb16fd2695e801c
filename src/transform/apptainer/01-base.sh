#!/bin/sh
# Written by gridship. Sourced first; the image's own environment follows in
# 10-docker2singularity.sh (from the image config) and 90-environment.sh.
