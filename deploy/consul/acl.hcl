# Consul agent configuration for a mesh with ACLs on (mount into /consul/config/).
#
# default deny: a request without a token sees no service and may register none. The mesh's
# nodes read their token from a file (CONSUL_HTTP_TOKEN_FILE or --consul-token-file), never
# from a command line or a URL; see deploy/consul/bootstrap.sh for making that token.
acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  # Tokens set with `consul acl set-agent-token` survive an agent restart.
  enable_token_persistence = true
}
