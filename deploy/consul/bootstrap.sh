#!/bin/sh
# Make the mesh's Consul token once, on an agent started with deploy/consul/acl.hcl, and write
# it to a file the nodes read through CONSUL_HTTP_TOKEN_FILE (mode 0600, never printed).
#
#   deploy/consul/bootstrap.sh /run/secrets/consul   # writes management.token and mesh.token
#
# The bootstrap (management) token is kept next to it for operators; guard or delete it.
set -eu
out=${1:?usage: bootstrap.sh OUTPUT_DIR}
here=$(dirname "$0")
umask 077
mkdir -p "$out"
if [ ! -s "$out/management.token" ]; then
  consul acl bootstrap -format=json | sed -n 's/.*"SecretID": *"\([^"]*\)".*/\1/p' > "$out/management.token"
fi
export CONSUL_HTTP_TOKEN_FILE="$out/management.token"
consul acl policy read -name mesh-node >/dev/null 2>&1 ||
  consul acl policy create -name mesh-node -description "mesh nodes: register mesh-*, read the catalog" \
    -rules @"$here/mesh-policy.hcl" >/dev/null
if [ ! -s "$out/mesh.token" ]; then
  consul acl token create -description "mesh nodes" -policy-name mesh-node -format=json |
    sed -n 's/.*"SecretID": *"\([^"]*\)".*/\1/p' > "$out/mesh.token"
fi
# The agent itself needs node:write to register its node and keep its checks in sync.
consul acl policy read -name mesh-agent >/dev/null 2>&1 ||
  consul acl policy create -name mesh-agent -description "the Consul agent's own node" \
    -rules 'node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}' >/dev/null
if [ ! -s "$out/agent.token" ]; then
  consul acl token create -description "consul agent" -policy-name mesh-agent -format=json |
    sed -n 's/.*"SecretID": *"\([^"]*\)".*/\1/p' > "$out/agent.token"
fi
consul acl set-agent-token agent "$(cat "$out/agent.token")" >/dev/null  # persisted (enable_token_persistence)
# Optional: hand the nodes' token to the user they run as (compose: uid 10001), still 0600.
if [ -n "${TOKEN_OWNER:-}" ]; then chown "$TOKEN_OWNER" "$out/mesh.token"; fi
echo "mesh token written to $out/mesh.token; set CONSUL_HTTP_TOKEN_FILE=$out/mesh.token on every node"
