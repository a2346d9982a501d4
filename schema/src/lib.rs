//! Every contract of Memberline in one crate: database entities and migrations, the typed
//! states ([`states`]), money arithmetic, the event envelope and event types, the push contract
//! ([`push`]) and the RabbitMQ topology.
//!
//! Nothing here talks to a database or a broker on its own; the gateway and the workers do.

pub mod entities;
pub mod events;
pub mod ids;
pub mod migrations;
pub mod money;
pub mod push;
pub mod states;
pub mod topology;

pub use migrations::Migrator;
