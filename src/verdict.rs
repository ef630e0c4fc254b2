//! The verdict on a credential, whichever store produced it (embedded list or key service).

use std::rc::Rc;

use crate::ratelimit::Limit;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub key_id: String,
    /// Who the key acts for (the Basic user where there is one).
    pub subject: String,
    pub account: String,
    pub plan: String,
    pub scopes: Vec<String>,
    /// Unix seconds; the key is refused from this instant on.
    pub expires_at: Option<u64>,
    /// A per-key limit that overrides the plan's.
    pub rate_limit: Option<Limit>,
    /// Named lists a route can check ownership against, e.g. `aggregator -> [a1, a2]`.
    pub resources: Vec<(String, Vec<String>)>,
}

impl Identity {
    pub fn resource(&self, name: &str) -> Option<&[String]> {
        self.resources
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such key (or the Basic user does not match it).
    Unknown,
    Expired,
    Revoked,
    Disabled,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::Disabled => "disabled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Shared, not copied: the hot path hands out a reference count, not a clone.
    Valid(Rc<Identity>),
    Refused(Refusal),
}

impl Verdict {
    /// Applies the key's own expiry at `now` (unix seconds): a verdict never outlives its key.
    pub fn at(self, now_s: u64) -> Verdict {
        match self {
            Verdict::Valid(id) if id.expires_at.is_some_and(|e| now_s >= e) => {
                Verdict::Refused(Refusal::Expired)
            }
            v => v,
        }
    }
}
