#!/bin/bash
# Verifier written by taskforge. Runs the tests offline (pytest is baked into the base image)
# and writes the reward file Harbor reads. A reward file left by the agent is removed first.
mkdir -p /logs/verifier
rm -f /logs/verifier/reward.txt /logs/verifier/reward.json
cd /tests
if python3 -m pytest -q -p no:cacheprovider -rA test_outputs.py; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
