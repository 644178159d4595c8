#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d),
# as deploy/postgres/create-orthanc-db.sh is for compose: Orthanc's index gets its own
# database on the server radnode's index uses.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"$ORTHANC_DB\" OWNER \"$POSTGRES_USER\""
