#!/usr/bin/env bash
# Make a shared S3-compatible bucket the default DVC remote of this clone (config.local, so
# nothing machine-specific is committed). Credentials come from the environment (team.env).
#   deploy/dvc-remote-s3.sh s3://bucket/vaelab [https://s3.example.internal]
set -euo pipefail
url=${1:?usage: $0 s3://bucket/path [endpoint-url]}
dvc remote add --local --force -d team "$url"
if [ -n "${2:-}" ]; then
  dvc remote modify --local team endpointurl "$2"
fi
dvc remote list
