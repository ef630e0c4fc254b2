//! The keygate plugins (root contexts) of one VM, and which of them a callback belongs to.
//!
//! Usually a VM holds one plugin. It holds several when filters share a `vm_id` and code (Istio
//! gives every WasmPlugin the VM id ""), each with its own configuration, and for a while after a
//! reconfiguration: Envoy keeps the VM and configures a new root context beside the old one.
//! keygate exports neither `proxy_on_context_create` (a VM entry per request) nor
//! `proxy_on_done` (another one), so:
//! - a stream finds its plugin by the `plugin_name` property, read only when there is more than
//!   one plugin to choose from;
//! - a plugin configured under a name another root already holds replaces it for new streams
//!   (that is what a reconfiguration is). The old one is *retired*: it still answers for the
//!   streams whose state it holds (a request waiting for its body, rate-limit headers for a
//!   response) and for its calls in flight, and is dropped once it holds nothing.
//!
//! Pure: the host (`host::mod`) reads the property and asks the plugins what they hold.

use std::collections::HashMap;

/// The plugins of a VM. `P` is the host's plugin (tests use a stand-in).
pub struct Plugins<P> {
    /// Root context id -> plugin, for every plugin still in the VM (active or retired).
    by_root: HashMap<u32, P>,
    /// `plugin_name` -> the root context new streams of that name go to.
    by_name: HashMap<Vec<u8>, u32>,
    /// Roots replaced by a newer configuration of their name, kept while they hold anything.
    retired: Vec<u32>,
}

impl<P> Default for Plugins<P> {
    fn default() -> Self {
        Plugins {
            by_root: HashMap::new(),
            by_name: HashMap::new(),
            retired: Vec::new(),
        }
    }
}

/// What configuring a plugin did to the plugin that held its name before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Configured {
    /// The name was free (or held by this root already).
    New,
    /// Another root held the name: it is retired, new streams go to this one.
    Replaced(u32),
}

impl<P> Plugins<P> {
    /// Adds (or reconfigures) the plugin of root context `root`, named `name`.
    pub fn configure(&mut self, root: u32, name: Vec<u8>, plugin: P) -> Configured {
        // a root configured again under another name lets its old name go
        self.by_name.retain(|_, r| *r != root);
        self.retired.retain(|r| *r != root);
        self.by_root.insert(root, plugin);
        match self.by_name.insert(name, root) {
            Some(old) if old != root => {
                self.retired.push(old);
                Configured::Replaced(old)
            }
            _ => Configured::New,
        }
    }

    /// The plugin of root context `root` (its ticks and its calls' answers), retired or not.
    pub fn root(&mut self, root: u32) -> Option<&mut P> {
        self.by_root.get_mut(&root)
    }

    /// Whether `root` was replaced by a newer configuration of its name.
    pub fn is_retired(&self, root: u32) -> bool {
        self.retired.contains(&root)
    }

    /// The plugin a new stream belongs to: the only active one without asking its name, else
    /// the one `name()` (the stream's `plugin_name`) names. `None`: no plugin has that name.
    pub fn for_new_stream(&mut self, name: impl FnOnce() -> Vec<u8>) -> Option<&mut P> {
        let root = if self.by_name.len() == 1 {
            self.by_name.values().next().copied()
        } else {
            self.by_name.get(&name()).copied()
        }?;
        self.by_root.get_mut(&root)
    }

    /// The plugin a later callback of stream `ctx` belongs to: a retired plugin that holds the
    /// stream's state (`holds`), else as for a new stream.
    pub fn for_stream(
        &mut self,
        ctx: u32,
        holds: impl Fn(&P, u32) -> bool,
        name: impl FnOnce() -> Vec<u8>,
    ) -> Option<&mut P> {
        let held = self
            .retired
            .iter()
            .copied()
            .find(|r| self.by_root.get(r).is_some_and(|p| holds(p, ctx)));
        match held {
            Some(r) => self.by_root.get_mut(&r),
            None => self.for_new_stream(name),
        }
    }

    /// Drops every retired plugin `done` says holds nothing any more (it may flush what it
    /// batched before it goes).
    pub fn sweep(&mut self, mut done: impl FnMut(&mut P) -> bool) {
        let by_root = &mut self.by_root;
        self.retired.retain(|r| {
            let gone = by_root.get_mut(r).is_none_or(&mut done);
            if gone {
                by_root.remove(r);
            }
            !gone
        });
    }

    /// Whether any plugin was replaced and is still kept.
    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Plugins in the VM, active and retired.
    pub fn len(&self) -> usize {
        self.by_root.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_root.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

    /// A stand-in plugin: its configuration's name and the streams whose state it holds.
    #[derive(Debug)]
    struct Fake {
        config: &'static str,
        holds: Vec<u32>,
    }

    fn fake(config: &'static str) -> Fake {
        Fake {
            config,
            holds: Vec::new(),
        }
    }

    fn held(p: &Fake, ctx: u32) -> bool {
        p.holds.contains(&ctx)
    }

    #[test]
    fn one_plugin_never_asks_the_stream_its_name() {
        let mut v = Plugins::default();
        assert_eq!(v.configure(1, b"kg".to_vec(), fake("a")), Configured::New);
        let asked = Cell::new(0);
        let name = || {
            asked.set(asked.get() + 1);
            b"other".to_vec()
        };
        assert_eq!(v.for_new_stream(name).unwrap().config, "a");
        assert_eq!(v.for_stream(7, held, name).unwrap().config, "a");
        assert_eq!(asked.get(), 0);
    }

    #[test]
    fn several_plugins_route_by_name_and_an_unknown_name_gets_none() {
        let mut v = Plugins::default();
        v.configure(1, b"public-api".to_vec(), fake("a"));
        v.configure(2, b"admin-api".to_vec(), fake("b"));
        assert_eq!(
            v.for_new_stream(|| b"admin-api".to_vec()).unwrap().config,
            "b"
        );
        assert_eq!(
            v.for_new_stream(|| b"public-api".to_vec()).unwrap().config,
            "a"
        );
        // never a guess: the host answers such a stream 500
        assert!(v.for_new_stream(|| b"nobody".to_vec()).is_none());
        assert!(v.for_new_stream(Vec::new).is_none());
    }

    #[test]
    fn a_reconfiguration_replaces_the_old_root_for_new_streams() {
        let mut v = Plugins::default();
        v.configure(1, b"kg".to_vec(), fake("old"));
        assert_eq!(
            v.configure(2, b"kg".to_vec(), fake("new")),
            Configured::Replaced(1)
        );
        assert!(v.is_retired(1) && !v.is_retired(2));
        // one active plugin again: no property read, and it is the new one
        assert_eq!(v.for_new_stream(|| panic!("asked")).unwrap().config, "new");
        // the old root still answers its own callbacks (calls in flight, ticks)
        assert_eq!(v.root(1).unwrap().config, "old");
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn a_stream_the_retired_plugin_holds_stays_with_it() {
        // a request paused for its body under the old configuration must be checked by it:
        // sent to the new plugin, which knows nothing of it, its body would go on unchecked
        let mut v = Plugins::default();
        v.configure(1, b"kg".to_vec(), fake("old"));
        v.root(1).unwrap().holds.push(40);
        v.configure(2, b"kg".to_vec(), fake("new"));
        assert_eq!(v.for_stream(40, held, Vec::new).unwrap().config, "old");
        assert_eq!(v.for_stream(41, held, Vec::new).unwrap().config, "new");
    }

    #[test]
    fn retired_plugins_go_when_they_hold_nothing() {
        let mut v = Plugins::default();
        v.configure(1, b"kg".to_vec(), fake("old"));
        v.root(1).unwrap().holds.push(40);
        v.configure(2, b"kg".to_vec(), fake("new"));
        v.sweep(|p| p.holds.is_empty());
        assert!(v.root(1).is_some(), "still holds stream 40");
        v.root(1).unwrap().holds.clear();
        v.sweep(|p| p.holds.is_empty());
        assert!(v.root(1).is_none());
        assert_eq!(v.len(), 1);
        // an active plugin is never swept, however idle
        assert_eq!(v.root(2).unwrap().config, "new");
    }

    #[test]
    fn a_root_configured_again_keeps_one_entry_and_drops_its_old_name() {
        let mut v = Plugins::default();
        v.configure(1, b"a".to_vec(), fake("1"));
        v.configure(2, b"b".to_vec(), fake("2"));
        assert_eq!(v.configure(1, b"c".to_vec(), fake("1'")), Configured::New);
        assert!(v.for_new_stream(|| b"a".to_vec()).is_none());
        assert_eq!(v.for_new_stream(|| b"c".to_vec()).unwrap().config, "1'");
        assert_eq!(v.len(), 2);
        assert!(!v.is_retired(1));
    }

    proptest! {
        /// Whatever sequence of configurations and sweeps: every name routes to the root last
        /// configured under it, no active root is ever dropped, and retired roots are exactly
        /// the replaced ones still holding something.
        #[test]
        fn routing_follows_the_last_configuration(
            ops in proptest::collection::vec((0u32..6, 0u8..3, any::<bool>(), any::<bool>()), 1..40)
        ) {
            let mut v: Plugins<(u32, bool)> = Plugins::default();
            let mut last: HashMap<u8, u32> = HashMap::new();
            for (root, name, busy, sweep) in ops {
                last.retain(|_, r| *r != root);
                last.insert(name, root);
                v.configure(root, vec![name], (root, busy));
                if sweep {
                    v.sweep(|p| !p.1);
                    prop_assert!(!v.has_retired() || (0..6).any(|r| v.is_retired(r)));
                }
                for (n, r) in &last {
                    let got = v.for_new_stream(|| vec![*n]).map(|p| p.0);
                    prop_assert_eq!(got, Some(*r));
                    prop_assert!(!v.is_retired(*r));
                }
                prop_assert!(v.len() >= last.len());
                for r in 0..6 {
                    if v.is_retired(r) {
                        prop_assert!(!last.values().any(|x| *x == r));
                    }
                }
            }
            v.sweep(|_| true);
            prop_assert_eq!(v.len(), last.len());
        }
    }
}
