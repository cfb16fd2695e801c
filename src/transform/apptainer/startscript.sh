#!/bin/sh
# Written by gridship. The image defines no instance start script.
