#!/bin/sh
# gridship recipe entrypoint: run the command (default: a shell) under tini
# when tini is installed and we are PID 1, directly otherwise.
[ "$#" -gt 0 ] || set -- /bin/bash
if [ "$$" = 1 ] && command -v tini >/dev/null 2>&1; then
    exec tini -- "$@"
fi
exec "$@"
