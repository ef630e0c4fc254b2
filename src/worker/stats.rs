//! keygate's metrics in the host's stats (`crate::metrics` names them). Ids are defined on first
//! use and kept by the metric's index: no hashing or name comparison on the hot path.

use super::host::Host;
use crate::batch::Batch;
use crate::metrics::{Metric, Type};

pub(super) struct Stats {
    ids: [Option<u32>; Metric::COUNT],
    /// Per-request counts by metric id, added to the host's counters on the next tick (at most
    /// a second later): one host call a request less. A request counts 1-3 of them.
    pending: Batch,
    /// `keygate.ratelimit.rejected.<plan>` ids by the plan's index in the config.
    by_plan: Vec<Option<u32>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ids: [None; Metric::COUNT],
            pending: Batch::default(),
            by_plan: Vec::new(),
        }
    }
}

impl Stats {
    fn id<H: Host>(&mut self, h: &mut H, m: Metric) -> Option<u32> {
        let slot = self.ids.get_mut(m.index())?;
        if slot.is_none() {
            *slot = h.define_metric(m.kind(), m.name());
        }
        *slot
    }

    /// Counts one, batched until the next tick.
    pub(super) fn inc<H: Host>(&mut self, h: &mut H, m: Metric) {
        if let Some(id) = self.id(h, m) {
            self.pending.count(id);
        }
    }

    /// Counts one 429 for the plan at `index` in the config (named `plan`; `other` past the
    /// end): the metric's name is built once per plan.
    pub(super) fn inc_plan<H: Host>(&mut self, h: &mut H, index: usize, plan: &str) {
        let id = match self.by_plan.get(index).copied().flatten() {
            Some(id) => id,
            None => {
                let name = format!("keygate.ratelimit.rejected.{plan}");
                let Some(id) = h.define_metric(Type::Counter, &name) else {
                    return;
                };
                if self.by_plan.len() <= index {
                    self.by_plan.resize(index + 1, None);
                }
                if let Some(slot) = self.by_plan.get_mut(index) {
                    *slot = Some(id);
                }
                id
            }
        };
        self.pending.count(id);
    }

    /// Adds `by` now (rare events).
    pub(super) fn add_now<H: Host>(&mut self, h: &mut H, m: Metric, by: i64) {
        if let Some(id) = self.id(h, m) {
            h.increment_metric(id, by);
        }
    }

    pub(super) fn flush<H: Host>(&mut self, h: &mut H) {
        self.pending.flush(|id, n| h.increment_metric(id, n));
    }

    pub(super) fn record<H: Host>(&mut self, h: &mut H, m: Metric, value: u64) {
        if let Some(id) = self.id(h, m) {
            h.record_metric(id, value);
        }
    }
}
