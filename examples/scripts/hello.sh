#!/bin/sh
# A first script: greets, then shows what a script sees.
echo "Hello, ${OUTPOST_PARAM_NAME:-world}! This is $(hostname), run ${OUTPOST_RUN_ID}."
echo "Uptime: $(uptime)"
echo "Scripts see a clean environment:"
env | sort | sed 's/^/  /'
