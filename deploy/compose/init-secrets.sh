#!/bin/sh
# What twinline needs to start closed on a network, made once into the
# volume mounted at /secrets (docker-compose.yml, docker-compose.scale.yml):
#
#   bootstrap-token   a random admin token secret (--bootstrap-token-file)
#   tls.crt, tls.key  a self-signed certificate for TLS_HOSTS (--tls-cert,
#                     --tls-key); clients trust tls.crt itself
#   prometheus-token  with METRICS_TOKEN_OWNER set (the scale file): a copy
#                     of the bootstrap token that user (Prometheus) may
#                     read, to scrape /metrics with
#   grafana-token     with QUERY_TOKEN_OWNER set (the scale file): a copy
#                     of the bootstrap token that user (Grafana) may read,
#                     for its twinline datasource (the /prometheus query
#                     API)
#
# Files that exist are kept: delete one and run this again to replace it
# (docs/security.md, "Rotation"). Secrets are never printed.
set -eu
umask 077
dir=/secrets
# The image's user (distroless nonroot) owns the files; KEY_GROUP may also
# read the key (Mosquitto's 1883 in the scale file).
owner=65532
key_group=${KEY_GROUP:-65532}

if [ ! -s "$dir/bootstrap-token" ]; then
	openssl rand -base64 48 | tr -d '\n' >"$dir/bootstrap-token.new"
	mv "$dir/bootstrap-token.new" "$dir/bootstrap-token"
	echo "init-secrets: created a bootstrap admin token"
fi

if [ ! -s "$dir/tls.crt" ] || [ ! -s "$dir/tls.key" ]; then
	san=""
	for h in $(echo "${TLS_HOSTS:-localhost}" | tr ',' ' '); do
		case "$h" in
		*[!0-9.]*) san="$san,DNS:$h" ;;
		*) san="$san,IP:$h" ;;
		esac
	done
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-days "${TLS_DAYS:-365}" -subj "/CN=twinline" -addext "subjectAltName=${san#,}" \
		-keyout "$dir/tls.key.new" -out "$dir/tls.crt.new" 2>/dev/null
	mv "$dir/tls.key.new" "$dir/tls.key"
	mv "$dir/tls.crt.new" "$dir/tls.crt"
	echo "init-secrets: created a self-signed certificate for ${san#,}"
fi

# copy_token FILE OWNER WHO: a copy of the bootstrap token only OWNER (a
# uid) may read. Like every file here, made once: after replacing the
# bootstrap token, delete the copies too; once the bootstrap token is
# revoked, write a read token there instead
# (docs/observability.md#dashboards-and-the-stack, docs/grafana.md).
copy_token() {
	if [ ! -s "$dir/$1" ]; then
		cp "$dir/bootstrap-token" "$dir/$1.new"
		mv "$dir/$1.new" "$dir/$1"
		echo "init-secrets: copied the bootstrap token for $3"
	fi
	chown "$2:$2" "$dir/$1"
	chmod 0400 "$dir/$1"
}
if [ -n "${METRICS_TOKEN_OWNER:-}" ]; then
	copy_token prometheus-token "$METRICS_TOKEN_OWNER" Prometheus
fi
if [ -n "${QUERY_TOKEN_OWNER:-}" ]; then
	copy_token grafana-token "$QUERY_TOKEN_OWNER" Grafana
fi

chown "$owner:$owner" "$dir/bootstrap-token" "$dir/tls.crt"
chown "$owner:$key_group" "$dir/tls.key"
chmod 0400 "$dir/bootstrap-token"
chmod 0440 "$dir/tls.key"
chmod 0444 "$dir/tls.crt"

file=${COMPOSE_FILE_HINT:-deploy/compose/docker-compose.yml}
echo "init-secrets: the bootstrap admin token (keep it secret):"
echo "  docker compose -f $file run --rm --no-deps --entrypoint cat init-secrets /secrets/bootstrap-token"
echo "init-secrets: the certificate to trust (curl --cacert, devices):"
echo "  docker compose -f $file run --rm --no-deps --entrypoint cat init-secrets /secrets/tls.crt > twinline.crt"
