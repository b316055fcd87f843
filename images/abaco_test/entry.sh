#!/bin/sh
# The actor Abaco's own tests register: message, a short sleep (so executions are seen RUNNING),
# environment, root listing and what is mounted.
echo "Contents of MSG: $MSG"
sleep "${ABACO_TEST_SLEEP:-2}"
echo "Environment:"
env
echo "Contents of root:"
ls /
echo "Mounts:"
cat /proc/mounts 2>/dev/null | cut -d' ' -f2 | grep -v '^/proc/' || true
echo "Binary data present: $([ -s /_abaco_binary_data ] && echo yes || echo no)"
