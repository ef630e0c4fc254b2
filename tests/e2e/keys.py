"""Known test keys and the plugin config fragments that declare them (by SHA-256 only)."""
import base64
import hashlib


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


HEADER_KEY = "evon-test-key-0001"
BEARER_KEY = "esa-test-business-0001"
QUERY_KEY = "cat-test-key-0001"
PAT = "pat-alice-test-0001"
EXPIRED_KEY = "expired-test-key-0001"
DISABLED_KEY = "disabled-test-key-0001"

ALL_SECRETS = [HEADER_KEY, BEARER_KEY, QUERY_KEY, PAT, EXPIRED_KEY, DISABLED_KEY]

KEYS = [
    {"id": "k-header", "sha256": sha(HEADER_KEY), "account": "evon", "plan": "free", "scopes": ["read"]},
    {"id": "k-bearer", "sha256": sha(BEARER_KEY), "account": "esa", "plan": "pro", "scopes": ["read", "write"]},
    {"id": "k-query", "sha256": sha(QUERY_KEY), "account": "cat", "plan": "free",
     "resources": {"aggregator": ["agg-1", "agg 2"]}},
    {"id": "k-pat", "sha256": sha(PAT), "user": "alice", "account": "lyte", "plan": "free",
     "expires_at": "2099-01-01T00:00:00Z"},
    {"id": "k-expired", "sha256": sha(EXPIRED_KEY), "account": "evon", "plan": "free",
     "expires_at": "2020-01-01T00:00:00Z"},
    {"id": "k-disabled", "sha256": sha(DISABLED_KEY), "account": "evon", "disabled": True},
]
