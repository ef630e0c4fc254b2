//! keyservice: the key service an API provider runs beside keygate. It answers keygate's
//! key-service contract v1 (verify, revocation feed), Event Staff's token API, an operator's admin
//! API and CLI, and serves a dashboard for the API's customers. Keys are stored as SHA-256 only.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod history;
pub mod ingest;
pub mod model;
pub mod store;
pub mod usage;
pub mod web;
