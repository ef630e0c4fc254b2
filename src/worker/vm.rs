//! Every keygate plugin of one VM (`crate::plugins`), and which of them a callback belongs to:
//! the host's callbacks come here first.

use std::cell::RefCell;
use std::rc::Rc;

use super::{Action, Host, Worker};
use crate::config;
use crate::held::Ended;
use crate::plugins::{Configured, Plugins};

pub struct Vm<H: Host> {
    /// The host as the VM sees it (no plugin of its own): properties of new streams.
    host: H,
    plugins: Plugins<Worker<H>>,
    /// Streams ended while their body was held, whichever plugin held them: a chunk or trailers
    /// that still come for one are refused, never let through as a stranger's.
    ended: Rc<RefCell<Ended>>,
}

impl<H: Host> Vm<H> {
    pub fn new(host: H) -> Self {
        Vm {
            host,
            plugins: Plugins::default(),
            ended: Rc::default(),
        }
    }

    /// Configures the plugin of root context `root` with `bytes` (its JSON configuration);
    /// `false`: refused (the reasons are logged).
    pub fn configure(&mut self, root: u32, bytes: &[u8]) -> bool {
        let mut warnings = Vec::new();
        let cfg = match config::parse(bytes, &mut warnings) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        for w in &warnings {
            log::warn!("{w}");
        }
        log::info!("keygate: configured ({})", cfg.summary());
        let worker = Worker::new(self.host.for_root(root), cfg, self.ended.clone());
        let name = self.host.plugin_name(root);
        let shown = String::from_utf8_lossy(&name).into_owned();
        if let Configured::Replaced(old) = self.plugins.configure(root, name, worker) {
            log::info!("keygate: plugin `{shown}` configured again (root {root} replaces {old}): new requests use the new configuration; if two filters share this name in one VM, give them distinct names or vm_ids");
        }
        true
    }

    /// The plugin of root context `root`, retired or not.
    pub fn worker(&mut self, root: u32) -> Option<&mut Worker<H>> {
        self.plugins.root(root)
    }

    /// The plugin of a later callback of stream `ctx`: a retired plugin (replaced by a
    /// reconfiguration) that holds the stream's state keeps it, else as for a new stream.
    fn stream(&mut self, ctx: u32) -> Option<&mut Worker<H>> {
        let host = &mut self.host;
        self.plugins
            .for_stream(ctx, Worker::holds, || host.plugin_name(ctx))
    }

    /// Whether a plugin ended stream `ctx` while it held its body (or it cannot tell: then yes).
    fn was_ended(&self, ctx: u32) -> bool {
        self.ended.try_borrow().map_or(true, |e| e.contains(ctx))
    }

    /// A new stream's headers go to its plugin: the only one (no host call), or the one named
    /// by the stream's `plugin_name` (keygate does not export `proxy_on_context_create`, a VM
    /// entry per request, so this is how a stream finds its root when a VM holds several).
    pub fn on_request_headers(
        &mut self,
        ctx: u32,
        headers: &[(&str, &[u8])],
        has_body: bool,
    ) -> Action {
        let host = &mut self.host;
        match self.plugins.for_new_stream(|| host.plugin_name(ctx)) {
            Some(w) => w.on_request_headers(ctx, headers, has_body),
            None => {
                // no plugin of that name (cannot happen once configured): never a free pass
                self.host
                    .reply(ctx, 500, &[], b"keygate is not configured\n");
                Action::Pause
            }
        }
    }

    /// A body chunk; one of a stream ended while held is refused (reset).
    pub fn on_request_body(&mut self, ctx: u32, size: usize, end_of_stream: bool) -> Action {
        if self.was_ended(ctx) {
            self.host.reset(ctx);
            return Action::Pause;
        }
        self.stream(ctx).map_or(Action::Pause, |w| {
            w.on_request_body(ctx, size, end_of_stream)
        })
    }

    /// Trailers; those of a stream ended while held are refused (reset).
    pub fn on_request_trailers(&mut self, ctx: u32, trailers: &[(&str, &[u8])]) -> Action {
        if self.was_ended(ctx) {
            self.host.reset(ctx);
            return Action::Pause;
        }
        self.stream(ctx)
            .map_or(Action::Pause, |w| w.on_request_trailers(ctx, trailers))
    }

    pub fn on_response_headers(&mut self, ctx: u32) -> Action {
        self.stream(ctx)
            .map_or(Action::Continue, |w| w.on_response_headers(ctx))
    }

    pub fn on_call_response(&mut self, root: u32, token: u32, body_size: usize) {
        if let Some(w) = self.plugins.root(root) {
            w.on_call_response(token, body_size);
        }
    }

    /// Root `root`'s tick; any root's tick also tends the retired plugins (Envoy may stop
    /// ticking a replaced root before it is idle), and drops those that hold nothing.
    pub fn on_tick(&mut self, root: u32) {
        let retired = self.plugins.is_retired(root);
        if let Some(w) = self.plugins.root(root) {
            w.on_tick(retired);
        }
        if self.plugins.has_retired() {
            self.plugins.sweep(Worker::sweep_retired);
        }
    }
}
