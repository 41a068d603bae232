# Sourced by .ci/run: start Debian's PostgreSQL on 127.0.0.1 and export TEST_POSTGRES_URL.
ver="$(ls /usr/lib/postgresql | sort -n | tail -1)"
if ! pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_lsclusters -h 2>/dev/null | grep -q "^$ver main" || pg_createcluster "$ver" main >/dev/null
  pg_ctlcluster "$ver" main start
fi
for _ in $(seq 1 30); do su postgres -c "pg_isready -q -h 127.0.0.1" && break; sleep 1; done
su postgres -c "psql -q -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='llmbot') THEN CREATE ROLE llmbot LOGIN PASSWORD 'llmbot'; END IF; END \\\$\\\$;\"" >/dev/null
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='llmbot_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O llmbot llmbot_test"
export TEST_POSTGRES_URL="postgresql://llmbot:llmbot@127.0.0.1:5432/llmbot_test"
