//! The Memberline gateway: the REST API, bearer auth, order placement with its transactional
//! outbox, the outbox relay (embeddable or standalone), health, metrics and the OpenAPI
//! document. Consumers of the events live in `memberline-workers`.

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod console_tail;
pub mod error;
pub mod lanes;
pub mod notifications;
pub mod orders;
pub mod pages;
pub mod pricing;
pub mod push;
pub mod relay;
pub mod seed;
pub mod state;

pub use app::Application;
