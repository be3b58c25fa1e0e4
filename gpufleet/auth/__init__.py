"""A network's identities: its operator and accounts, the roles' permissions, credentials and TLS."""

from gpufleet.auth.authority import AccountLimits, AuthError, Authority, IssuedCredential, push_accounts
from gpufleet.auth.roles import EDGE_ACCOUNT, HUB_ACCOUNT, ROLE_RULES, RoleRules
from gpufleet.auth.tls import ServerTls, TlsError, ensure_server_tls

__all__ = [
    "EDGE_ACCOUNT",
    "HUB_ACCOUNT",
    "ROLE_RULES",
    "AccountLimits",
    "AuthError",
    "Authority",
    "IssuedCredential",
    "RoleRules",
    "ServerTls",
    "TlsError",
    "ensure_server_tls",
    "push_accounts",
]
