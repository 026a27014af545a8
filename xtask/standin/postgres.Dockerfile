# Stand-in for postgres:16-bookworm where Docker Hub cannot be reached: Debian bookworm's
# PostgreSQL 15 (the version the local and test clusters run) with an entrypoint of the same
# contract as the official one (POSTGRES_PASSWORD_FILE, /docker-entrypoint-initdb.d, PGDATA,
# PG_MAJOR). Built by `cargo xtask compose-test`; users get the official image.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql \
 && chown postgres:postgres /var/run/postgresql
ENV PG_MAJOR=15 \
    PGDATA=/var/lib/postgresql/data \
    PATH=/usr/lib/postgresql/15/bin:$PATH
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 5432
CMD ["postgres"]
