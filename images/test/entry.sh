#!/bin/sh
# Abaco's sample "test" actor: echo the message, then the whole environment.
echo "Contents of MSG: $MSG"
echo "Environment:"
env
