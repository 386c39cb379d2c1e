#!/usr/bin/env bash
# Docker HEALTHCHECK: healthy when every enabled service answers.
set -u
if [ "${START_SSHD:-1}" = "1" ]; then
  (exec 3<>"/dev/tcp/127.0.0.1/${SSHD_PORT:-22}") 2>/dev/null || exit 1
fi
if [ "${START_INFERENCE_API:-1}" = "1" ]; then
  curl -fsS --max-time 3 "http://127.0.0.1:${INFERENCE_API_PORT:-8000}/healthz" >/dev/null ||
    exit 1
fi
exit 0
