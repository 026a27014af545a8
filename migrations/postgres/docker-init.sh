#!/usr/bin/env bash
# First start of the compose database (docker-entrypoint-initdb.d): TLS files, the repo's
# hardening, then the bootstrap SQL with passwords from compose secrets. Runs once per volume.
set -euo pipefail

install -m 0600 -o postgres -g postgres /run/secrets/db_tls_crt "$PGDATA/server.crt"
install -m 0600 -o postgres -g postgres /run/secrets/db_tls_key "$PGDATA/server.key"
install -m 0600 -o postgres -g postgres /run/secrets/ca_crt "$PGDATA/ca.crt"

cat >> "$PGDATA/postgresql.conf" <<CONF

# --- Portcullis (compose) ---
include '/etc/portcullis/hardening.conf'
hba_file = '/etc/portcullis/pg_hba.conf'
listen_addresses = '*'
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.crt'
CONF

# The hardening preloads pgaudit, which the bootstrap needs: restart the entrypoint's temporary
# (socket-only) server so it takes the new configuration; pg_ctl keeps its options.
pg_ctl -D "$PGDATA" -m fast -w restart >/dev/null

PORTCULLIS_OWNER_PASSWORD="$(cat /run/secrets/db_owner_password)" \
PORTCULLIS_APP_PASSWORD="$(cat /run/secrets/db_app_password)" \
PORTCULLIS_DB_NAME="${PORTCULLIS_DB_NAME:-portcullis}" \
  psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -f /etc/portcullis/bootstrap.sql
