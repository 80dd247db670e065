# What a mesh node needs from Consul (Helpers, AI nodes, notifiers, `mesh submit`):
# - service:write on its own service, to register, deregister and feed its TTL check
#   (PUT /v1/agent/service/register, /v1/agent/check/pass|warn|fail/<id>);
# - service:read and node:read to watch the other role (GET /v1/health/service/<name>:
#   an entry a token may not read is silently left out).
# Service names are mesh-helper and mesh-ai unless --service-name / --ai-service say otherwise.
service_prefix "mesh-" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
