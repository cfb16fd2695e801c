#!/bin/sh
# Written by gridship. Environment set by a definition file's %environment
# section goes here; images converted from OCI have none.
