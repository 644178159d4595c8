#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d):
# Orthanc's index gets its own database on the server radnode's index uses.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE orthanc OWNER \"$POSTGRES_USER\""
