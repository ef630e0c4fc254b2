//! Bodies held for a check (`crate::held`): a request's headers go on, its body is buffered by
//! the host until it is in (or longer than a check reads), then checked; it goes on to the
//! upstream, or the request is refused. Trailers end such a body too. The table is bounded: a
//! full one is swept for streams that are gone, else the new request is refused (503); a body
//! still incomplete `bodies.timeout_ms` after it began to be held ends its request (408).
//!
//! (The request's headers go on before the body is read: proxy-wasm in Envoy turns a paused
//! header callback into "stop all", which withholds the body from the filter too. What the
//! upstream may do with the headers alone is the shipped configs' `buffer` filter's to hold:
//! envoy/docs/security.md.)

use std::rc::Rc;

use super::{Action, Host, Worker};
use crate::body::MAX_OWNER_BODY;
use crate::gate::{Admitted, Allow, BodyCheck, Decision, Outcome, Unchecked};
use crate::metrics::Metric;
use crate::verdict::Identity;

/// A full table of held bodies is swept for streams that are gone at most this often.
const ROOM_SWEEP_MS: u64 = 100;
/// Held streams older than this are asked after on every tick (is the stream still there?).
pub(super) const HELD_PROBE_AFTER_MS: u64 = 5_000;

/// A body held for its check: what the check needs, how the hold began, and what comes after.
pub(super) struct HeldBody {
    check: BodyCheck,
    /// Whose request it is (`None`: a public route's).
    id: Option<Rc<Identity>>,
    /// The hold began as a paused request resumed (its verdict came from a key-service or
    /// fleet call): Envoy hands over what it buffered meanwhile, trailers included, in one go.
    resumed: bool,
    /// What the request is counted as when its body passed (`Allowed`, `Public`).
    outcome: Outcome,
    /// Its limit, counted once the body passed (`Gate::before_body`; `None`: nothing to count).
    later: Option<Admitted>,
    /// The body passed and the request waits for its limit (a fleet engine's answer): it stays
    /// here so that the upstream answering first, or the client going away, ends the wait.
    limiting: bool,
}

impl<H: Host> Worker<H> {
    /// Holds stream `ctx`'s body for `check` (`later`: the limit to count once it passed),
    /// making room in a full table; the denial when there is none (`None`: held).
    pub(super) fn hold(
        &mut self,
        ctx: u32,
        check: BodyCheck,
        a: &Allow,
        resumed: bool,
        later: Option<Admitted>,
    ) -> Option<Decision> {
        if self.held.is_full() {
            self.make_room();
        }
        let held = HeldBody {
            check,
            id: a.log.identity.clone(),
            resumed,
            outcome: a.log.decision,
            later,
            limiting: false,
        };
        let h = self.held.hold(ctx, held, self.now.ms()).err()?;
        Some(
            self.gate
                .body_unchecked(&h.check, h.id.as_ref(), Unchecked::NoRoom),
        )
    }

    /// Ends held stream `ctx` (taken out of the table already) with `why`'s denial; a chunk or
    /// trailers that still come for it are refused (`Vm`).
    pub(super) fn end_held(&mut self, ctx: u32, h: &HeldBody, why: Unchecked) -> Action {
        self.note_ended(ctx);
        let d = self.gate.body_unchecked(&h.check, h.id.as_ref(), why);
        self.apply(ctx, d, false)
    }

    pub(super) fn note_ended(&self, ctx: u32) {
        if let Ok(mut e) = self.ended.try_borrow_mut() {
            e.note(ctx);
        }
    }

    /// Whether stream `ctx` still waits for an answer to its limit (`after_body`: counted once
    /// its body passed, `Gate::before_body`): it leaves the held table then.
    #[inline(never)]
    pub(super) fn still_waiting(&mut self, ctx: u32, after_body: bool) -> bool {
        if after_body && self.held.take(ctx).is_none() {
            return false; // ended meanwhile (the upstream answered first, the client went away)
        }
        self.host.alive(ctx)
    }

    /// Applies the decision of a request that waited for its limit, and lets it go on.
    #[inline(never)]
    pub(super) fn answer_waiter(&mut self, ctx: u32, d: Decision, after_body: bool) {
        if after_body && matches!(d, Decision::Deny(..)) {
            self.note_ended(ctx);
        }
        self.apply(ctx, d, true);
    }

    /// A body chunk. Only requests whose body a check reads are held: the host buffers the body
    /// until the end of the stream, or until it is longer than a check reads; then it is
    /// checked.
    pub fn on_request_body(&mut self, ctx: u32, size: usize, end_of_stream: bool) -> Action {
        if !self.held.contains(ctx) {
            return Action::Continue;
        }
        if !end_of_stream && size <= MAX_OWNER_BODY
            || self.held.get(ctx).is_some_and(|h| h.limiting)
        {
            return Action::Pause; // StopIterationAndBuffer
        }
        self.read_clock();
        let body = self.host.request_body(ctx, size.min(MAX_OWNER_BODY + 1));
        self.check_held(ctx, body, false)
    }

    /// The held body of `ctx` is complete (`body`: what the host handed over, `None` if
    /// nothing): the check decides; a body that passed has its limit counted now, and stays
    /// held while a fleet engine is asked (`at_trailers`: it ended with trailers).
    fn check_held(&mut self, ctx: u32, body: Option<Vec<u8>>, at_trailers: bool) -> Action {
        let gate = self.gate.clone();
        let Some(h) = self.held.get_mut(ctx) else {
            return Action::Continue;
        };
        let denial = match body {
            Some(body) => gate.check_body(&h.check, h.id.as_ref(), &body),
            None => Some(gate.body_unchecked(&h.check, h.id.as_ref(), Unchecked::Unreadable)),
        };
        if let Some(deny) = denial {
            self.held.take(ctx);
            self.note_ended(ctx);
            return self.apply(ctx, deny, false);
        }
        let (later, outcome, resumed) = (h.later.take(), h.outcome, h.resumed);
        h.limiting = true;
        let action = match later {
            None => {
                self.held.take(ctx);
                self.log_tails.remove(&ctx); // its last access-log value is written
                self.stats.inc(&mut self.host, Metric::of_outcome(outcome));
                Action::Continue
            }
            // `None`: the body stays paused, held, until the engine answers (`still_waiting`)
            Some(a) => match self.count(ctx, a) {
                None => return Action::Pause,
                Some(d) => {
                    self.held.take(ctx);
                    if matches!(d, Decision::Deny(..)) {
                        self.note_ended(ctx);
                    }
                    self.apply(ctx, d, false)
                }
            },
        };
        if at_trailers && action == Action::Continue && resumed {
            // The body passed, but these trailers may be Envoy's own resumption of the paused
            // request (they came before the verdict): continuing from inside it, Envoy skips
            // the body for every filter after keygate and hands it to the router after the
            // trailers (measured in Envoy 1.40: the upstream got an empty body; behind the
            // buffer filter, `content-length: 0` and then the body's raw bytes, a request of
            // their own to the upstream). So the request stops here and goes on from the next
            // tick, made to come at once, outside that resumption: the body then reaches the
            // filters after keygate before the trailers, as when it had no pause.
            self.resume_soon.push(ctx);
            self.fast_tick = true;
            self.host.set_tick_period_ms(1);
            return Action::Pause;
        }
        action
    }

    /// Request trailers: the end of a request whose body ended without `end_of_stream` (an h2
    /// HEADERS frame after the data, HTTP/1.1 chunked trailers). Identity headers (and hidden
    /// credential carriers) are removed from them as from the headers; a held body is checked
    /// now, with the trailers.
    pub fn on_request_trailers(&mut self, ctx: u32, trailers: &[(&str, &[u8])]) -> Action {
        let (remove, changes_body) = self.gate.trailers(trailers);
        for n in remove {
            self.host.remove_request_trailer(ctx, n);
        }
        match self.held.get(ctx) {
            None => return Action::Continue,
            Some(h) if h.limiting => return Action::Pause,
            Some(_) => {}
        }
        self.read_clock();
        if changes_body {
            if let Some(h) = self.held.take(ctx) {
                return self.end_held(ctx, &h, Unchecked::Trailers);
            }
        }
        let body = self.host.request_body(ctx, MAX_OWNER_BODY + 1);
        self.check_held(ctx, body, true)
    }

    /// On the tick: checked bodies let on, the overdue ended, those of streams gone forgotten.
    pub(super) fn tend_held(&mut self) {
        self.resume_pending();
        if std::mem::take(&mut self.fast_tick) {
            let period = self.tick_period_ms();
            self.host.set_tick_period_ms(period);
        }
        self.sweep_held(HELD_PROBE_AFTER_MS);
    }

    /// Lets on the streams of `resume_soon` that are still there.
    pub(super) fn resume_pending(&mut self) {
        for ctx in std::mem::take(&mut self.resume_soon) {
            if self.host.alive(ctx) {
                self.host.resume(ctx);
            }
        }
    }

    /// Makes room in a full table of held bodies: streams that are gone leave it, overdue ones
    /// are ended (at most every `ROOM_SWEEP_MS`: a table kept full by live streams costs one
    /// sweep, not one per request).
    fn make_room(&mut self) {
        if self.now.ms_since(self.room_swept) < ROOM_SWEEP_MS {
            return;
        }
        self.room_swept = self.now;
        self.sweep_held(0);
    }

    /// Ends every held stream past `bodies.timeout_ms` (408) and forgets those of held streams
    /// held for `probe_after_ms` that the host no longer knows (the client went away).
    pub(super) fn sweep_held(&mut self, probe_after_ms: u64) {
        if self.held.is_empty() {
            return;
        }
        let now = self.now.ms();
        for ctx in self.held.overdue(now) {
            if self.held.get(ctx).is_some_and(|h| h.limiting) {
                continue; // its body is in: the engine's answer (or its timeout) ends the wait
            }
            let Some(h) = self.held.take(ctx) else {
                continue;
            };
            if self.host.alive(ctx) {
                self.end_held(ctx, &h, Unchecked::TimedOut);
            }
        }
        for ctx in self.held.older_than(now, probe_after_ms) {
            if !self.host.alive(ctx) {
                self.held.take(ctx);
            }
        }
    }
}
