//! What every Memberline process stands on, shared by the gateway, the relay and the workers so
//! that none of them imports another: layered [`settings`], [`telemetry`], Prometheus
//! [`metrics`], the PostgreSQL pool ([`db`]), [`shutdown`] signals, supervised [`broker`]
//! sessions, and the capabilities every writer shares, each in one place: the transactional
//! [`outbox`] (writer, relay, quarantine, wake-up), [`idempotency`] keys, shared-transaction
//! [`batch`]es, and the [`dead_letters`] contract (the headers the worker runtime writes and the
//! admin API and CLI read).
//!
//! Nothing here knows about the API's routes or about what a worker does with an event; the
//! only HTTP it serves is [`ops`], the `/metrics` and `/readyz` of processes without an API.

pub mod batch;
pub mod broker;
pub mod db;
pub mod dead_letters;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod idempotency;
pub mod metrics;
pub mod ops;
pub mod outbox;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use settings::{Secret, Settings};
