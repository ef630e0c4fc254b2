//! `FakeHost`: the worker's host in memory. Shared data follows Envoy's CAS rules
//! (`store::memory::MemoryStore`), the clock moves only when a test moves it, every call the
//! worker dispatches is recorded and answered by the test (or refused when scripted so), and
//! every stream keeps what was done to it: header mutations, the local reply, resumptions,
//! resets. `Sim` drives a `Vm` over it the way Envoy's callbacks would.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::metrics::Type;
use crate::store::memory::MemoryStore;
use crate::worker::{Action, Host, Time, Vm};

/// One Envoy process: shared data and the wall clock, common to every VM (worker thread).
#[derive(Default)]
pub struct Process {
    pub store: MemoryStore,
    pub now: Cell<Time>,
}

/// A call the worker dispatched.
#[derive(Clone, Debug)]
pub struct Dispatched {
    pub token: u32,
    pub root: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

impl Dispatched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub type Headers = Vec<(String, String)>;

/// What happened to one stream.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    /// The client went away: the host no longer knows the stream.
    pub gone: bool,
    pub request_headers: Vec<(String, String)>,
    pub request_trailers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The local reply: status, headers, body (at most one is ever sent).
    pub reply: Option<(u32, Headers, Vec<u8>)>,
    pub replies: u32,
    pub resumed: u32,
    pub reset: bool,
    pub response_headers: Vec<(String, String)>,
    pub log_state: Option<String>,
}

/// An answer being delivered to the worker.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub trailers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// What a VM's host calls did (shared by its plugins' hosts).
#[derive(Default)]
pub struct Record {
    pub calls: Vec<Dispatched>,
    next_token: u32,
    /// Dispatches still to refuse (the host's `Err`: no callback will come).
    pub refuse_dispatch: u32,
    pub answer: Option<Answer>,
    pub streams: HashMap<u32, Stream>,
    metric_names: Vec<(String, Type)>,
    pub metrics: HashMap<String, i64>,
    pub histograms: HashMap<String, Vec<u64>>,
    pub tick_period_ms: HashMap<u32, u32>,
    pub client_address: Vec<u8>,
    /// `plugin_name` by stream (and by root, for `configure`); `kg` when not set.
    pub plugin_names: HashMap<u32, Vec<u8>>,
}

impl Record {
    pub fn stream(&mut self, ctx: u32) -> &mut Stream {
        self.streams.entry(ctx).or_default()
    }
}

#[derive(Clone)]
pub struct FakeHost {
    root: u32,
    pub process: Rc<Process>,
    pub rec: Rc<RefCell<Record>>,
}

impl FakeHost {
    fn rec(&self) -> std::cell::RefMut<'_, Record> {
        self.rec.borrow_mut()
    }

    fn known(&self, ctx: u32) -> bool {
        let rec = self.rec.borrow();
        rec.streams.get(&ctx).is_some_and(|s| !s.gone) || rec.tick_period_ms.contains_key(&ctx)
    }
}

fn answer_value(pairs: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

impl Host for FakeHost {
    type Store = MemoryStore;

    fn now(&self) -> Time {
        self.process.now.get()
    }

    fn store(&self) -> &MemoryStore {
        &self.process.store
    }

    fn for_root(&self, root: u32) -> Self {
        FakeHost {
            root,
            process: self.process.clone(),
            rec: self.rec.clone(),
        }
    }

    fn client_address(&mut self, _ctx: u32) -> Vec<u8> {
        self.rec().client_address.clone()
    }

    fn plugin_name(&mut self, ctx: u32) -> Vec<u8> {
        let rec = self.rec();
        rec.plugin_names
            .get(&ctx)
            .cloned()
            .unwrap_or_else(|| b"kg".to_vec())
    }

    fn http_call(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Option<u32> {
        let root = self.root;
        let mut rec = self.rec();
        if rec.refuse_dispatch > 0 {
            rec.refuse_dispatch -= 1;
            return None;
        }
        rec.next_token += 1;
        let token = rec.next_token;
        rec.calls.push(Dispatched {
            token,
            root,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            timeout_ms,
        });
        Some(token)
    }

    fn call_header(&mut self, name: &str) -> Option<Vec<u8>> {
        answer_value(&self.rec().answer.as_ref()?.headers, name)
    }

    fn call_trailer(&mut self, name: &str) -> Option<Vec<u8>> {
        answer_value(&self.rec().answer.as_ref()?.trailers, name)
    }

    fn call_body(&mut self, size: usize) -> Option<Vec<u8>> {
        let rec = self.rec();
        let b = &rec.answer.as_ref()?.body;
        Some(b[..size.min(b.len())].to_vec())
    }

    fn alive(&mut self, ctx: u32) -> bool {
        self.known(ctx)
    }

    fn resume(&mut self, ctx: u32) -> bool {
        let ok = self.known(ctx);
        if ok {
            self.rec().stream(ctx).resumed += 1;
        }
        ok
    }

    fn reply(&mut self, ctx: u32, status: u32, headers: &[(String, String)], body: &[u8]) -> bool {
        let ok = self.known(ctx);
        if ok {
            let mut rec = self.rec();
            let s = rec.stream(ctx);
            s.replies += 1;
            s.reply = Some((status, headers.to_vec(), body.to_vec()));
        }
        ok
    }

    fn reset(&mut self, ctx: u32) {
        self.rec().stream(ctx).reset = true;
    }

    fn request_body(&mut self, ctx: u32, max: usize) -> Option<Vec<u8>> {
        let mut rec = self.rec();
        let b = &rec.stream(ctx).body;
        Some(b[..max.min(b.len())].to_vec())
    }

    fn remove_request_header(&mut self, ctx: u32, name: &str) {
        self.rec()
            .stream(ctx)
            .request_headers
            .retain(|(n, _)| n != name);
    }

    fn replace_request_header(&mut self, ctx: u32, name: &str, value: &[u8]) {
        let v = String::from_utf8_lossy(value).into_owned();
        let mut rec = self.rec();
        let h = &mut rec.stream(ctx).request_headers;
        h.retain(|(n, _)| n != name);
        h.push((name.to_string(), v));
    }

    fn add_request_header(&mut self, ctx: u32, name: &str, value: &str) {
        self.rec()
            .stream(ctx)
            .request_headers
            .push((name.to_string(), value.to_string()));
    }

    fn remove_request_trailer(&mut self, ctx: u32, name: &str) {
        self.rec()
            .stream(ctx)
            .request_trailers
            .retain(|(n, _)| n != name);
    }

    fn add_response_header(&mut self, ctx: u32, name: &str, value: &str) {
        self.rec()
            .stream(ctx)
            .response_headers
            .push((name.to_string(), value.to_string()));
    }

    fn replace_response_header(&mut self, ctx: u32, name: &str, value: &[u8]) {
        let v = String::from_utf8_lossy(value).into_owned();
        let mut rec = self.rec();
        let h = &mut rec.stream(ctx).response_headers;
        h.retain(|(n, _)| n != name);
        h.push((name.to_string(), v));
    }

    fn set_log_state(&mut self, ctx: u32, value: &[u8]) {
        self.rec().stream(ctx).log_state = Some(String::from_utf8_lossy(value).into_owned());
    }

    fn define_metric(&mut self, kind: Type, name: &str) -> Option<u32> {
        let mut rec = self.rec();
        rec.metric_names.push((name.to_string(), kind));
        u32::try_from(rec.metric_names.len() - 1).ok()
    }

    fn increment_metric(&mut self, id: u32, by: i64) {
        let mut rec = self.rec();
        let name = rec.metric_names[id as usize].0.clone();
        *rec.metrics.entry(name).or_default() += by;
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        let mut rec = self.rec();
        let name = rec.metric_names[id as usize].0.clone();
        rec.histograms.entry(name).or_default().push(value);
    }

    fn set_tick_period_ms(&mut self, ms: u32) {
        let root = self.root;
        self.rec().tick_period_ms.insert(root, ms);
    }
}

/// The root context of the plugin `Sim::new` configures.
pub const ROOT: u32 = 1;

/// A VM of keygate over a `FakeHost`, driven as Envoy's callbacks would.
pub struct Sim {
    pub vm: Vm<FakeHost>,
    pub process: Rc<Process>,
    pub rec: Rc<RefCell<Record>>,
}

/// 2027-01-15, a whole second: far from any edge a test cares about.
pub const START: Time = Time::from_ms(1_800_000_000_000);

impl Sim {
    /// A VM whose plugin (root `ROOT`) is configured with `config` (JSON).
    pub fn new(config: &str) -> Sim {
        let process = Rc::new(Process::default());
        process.now.set(START);
        Sim::in_process(process, config)
    }

    /// Another VM (worker thread) of the same process: same shared data, same clock.
    pub fn in_process(process: Rc<Process>, config: &str) -> Sim {
        let rec = Rc::new(RefCell::new(Record::default()));
        let host = FakeHost {
            root: 0,
            process: process.clone(),
            rec: rec.clone(),
        };
        let mut sim = Sim {
            vm: Vm::new(host),
            process,
            rec,
        };
        assert!(sim.configure(ROOT, config), "config refused: {config}");
        sim
    }

    pub fn configure(&mut self, root: u32, config: &str) -> bool {
        self.rec.borrow_mut().tick_period_ms.insert(root, 0);
        self.vm.configure(root, config.as_bytes())
    }

    pub fn advance(&self, ms: u64) {
        self.process.now.set(self.process.now.get().plus_ms(ms));
    }

    /// A request's headers (`:method` and `:path` first); `has_body` when a body follows.
    pub fn headers(&mut self, ctx: u32, headers: &[(&str, &str)], has_body: bool) -> Action {
        {
            let mut rec = self.rec.borrow_mut();
            let s = rec.stream(ctx);
            s.request_headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
        }
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        self.vm.on_request_headers(ctx, &pairs, has_body)
    }

    /// `GET path` with an `x-api-key`.
    pub fn get(&mut self, ctx: u32, path: &str, key: &str) -> Action {
        self.headers(
            ctx,
            &[(":method", "GET"), (":path", path), ("x-api-key", key)],
            false,
        )
    }

    /// A body chunk (appended to what the host buffered for the stream).
    pub fn body(&mut self, ctx: u32, chunk: &[u8], end_of_stream: bool) -> Action {
        let size = {
            let mut rec = self.rec.borrow_mut();
            let s = rec.stream(ctx);
            s.body.extend_from_slice(chunk);
            s.body.len()
        };
        self.vm.on_request_body(ctx, size, end_of_stream)
    }

    pub fn trailers(&mut self, ctx: u32, trailers: &[(&str, &str)]) -> Action {
        self.rec.borrow_mut().stream(ctx).request_trailers = trailers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let pairs: Vec<(&str, &[u8])> = trailers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        self.vm.on_request_trailers(ctx, &pairs)
    }

    pub fn response(&mut self, ctx: u32) -> Action {
        self.vm.on_response_headers(ctx)
    }

    pub fn tick(&mut self, root: u32) {
        self.vm.on_tick(root);
    }

    /// The client of stream `ctx` goes away.
    pub fn gone(&mut self, ctx: u32) {
        self.rec.borrow_mut().stream(ctx).gone = true;
    }

    /// Delivers `answer` to call `token` (to the root that made it).
    pub fn answer(&mut self, token: u32, answer: Answer) {
        let root = self.call(token).root;
        let size = answer.body.len();
        self.rec.borrow_mut().answer = Some(answer);
        self.vm.on_call_response(root, token, size);
        self.rec.borrow_mut().answer = None;
    }

    pub fn calls(&self) -> Vec<Dispatched> {
        self.rec.borrow().calls.clone()
    }

    pub fn call(&self, token: u32) -> Dispatched {
        self.calls()
            .into_iter()
            .find(|c| c.token == token)
            .unwrap_or_else(|| panic!("no call {token}"))
    }

    /// The last call dispatched.
    pub fn last_call(&self) -> Dispatched {
        self.calls().pop().expect("no call was dispatched")
    }

    pub fn stream(&self, ctx: u32) -> Stream {
        self.rec
            .borrow()
            .streams
            .get(&ctx)
            .cloned()
            .unwrap_or_default()
    }

    /// The local reply's status (`None`: none sent).
    pub fn status(&self, ctx: u32) -> Option<u32> {
        self.stream(ctx).reply.map(|r| r.0)
    }

    /// A header of the local reply.
    pub fn reply_header(&self, ctx: u32, name: &str) -> Option<String> {
        let (_, headers, _) = self.stream(ctx).reply?;
        headers.into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The problem slug of the local reply (`type`'s last segment).
    pub fn slug(&self, ctx: u32) -> Option<String> {
        let (_, _, body) = self.stream(ctx).reply?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let t = v["type"].as_str()?;
        Some(t.rsplit(['/', ':']).next()?.to_string())
    }

    pub fn resumed(&self, ctx: u32) -> u32 {
        self.stream(ctx).resumed
    }

    /// A request header as the upstream would get it.
    pub fn upstream_header(&self, ctx: u32, name: &str) -> Option<String> {
        self.stream(ctx)
            .request_headers
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn response_header(&self, ctx: u32, name: &str) -> Option<String> {
        self.stream(ctx)
            .response_headers
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// A counter's value as the host has it (batched counts arrive on the tick).
    pub fn metric(&self, name: &str) -> i64 {
        self.rec.borrow().metrics.get(name).copied().unwrap_or(0)
    }

    pub fn tick_period(&self, root: u32) -> u32 {
        self.rec.borrow().tick_period_ms[&root]
    }
}

// -- answers

/// The key service's answer: `:status` and a JSON body.
pub fn http(status: u32, body: &str) -> Answer {
    Answer {
        headers: vec![(":status".into(), status.to_string().into_bytes())],
        trailers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

/// A valid key's verify answer.
pub fn valid(key_id: &str, plan: &str) -> Answer {
    http(
        200,
        &format!(
            r#"{{"valid":true,"key_id":"{key_id}","account":"acme","plan":"{plan}","resources":{{"aggregator":["agg-1"]}}}}"#
        ),
    )
}

/// A refused key's verify answer.
pub fn refused(code: &str) -> Answer {
    http(200, &format!(r#"{{"valid":false,"code":"{code}"}}"#))
}

/// A rate-limit engine's answer: OK or OVER_LIMIT, with a status (`limit`, `remaining`,
/// `reset_s`) when `status` is given.
pub fn rls(over_limit: bool, status: Option<(u64, u64, u64)>) -> Answer {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(out: &mut Vec<u8>, f: u64, inner: &[u8]) {
        varint(out, f << 3 | 2);
        varint(out, inner.len() as u64);
        out.extend_from_slice(inner);
    }
    let code = if over_limit { 2 } else { 1 };
    let mut msg = vec![0x08, code];
    if let Some((limit, remaining, reset_s)) = status {
        let mut lim = vec![0x08];
        varint(&mut lim, limit);
        lim.extend_from_slice(&[0x10, 2]); // per minute
        let mut dur = vec![0x08];
        varint(&mut dur, reset_s);
        let mut st = vec![0x08, code];
        field(&mut st, 2, &lim);
        st.push(0x18);
        varint(&mut st, remaining);
        field(&mut st, 4, &dur);
        field(&mut msg, 2, &st);
    }
    let mut body = vec![0];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    Answer {
        headers: vec![
            (":status".into(), b"200".to_vec()),
            ("grpc-status".into(), b"0".to_vec()),
        ],
        trailers: vec![],
        body,
    }
}

/// Envoy's own gRPC failure of a call (`grpc-status` only, no body).
pub fn grpc_failure(grpc_status: u32) -> Answer {
    Answer {
        headers: vec![(":status".into(), b"200".to_vec())],
        trailers: vec![("grpc-status".into(), grpc_status.to_string().into_bytes())],
        body: vec![],
    }
}

/// The hits a `ShouldRateLimit` call asked for (its `hits_addend`, field 3).
pub fn hits(call: &Dispatched) -> u64 {
    let b = &call.body[5..];
    let mut at = 0;
    let varint = |at: &mut usize| {
        let mut v = 0u64;
        for i in 0.. {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                break;
            }
        }
        v
    };
    while at < b.len() {
        let key = varint(&mut at);
        match key & 7 {
            0 if key >> 3 == 3 => return varint(&mut at),
            0 => {
                varint(&mut at);
            }
            _ => at += varint(&mut at) as usize,
        }
    }
    1
}
