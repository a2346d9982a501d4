//! Foundation suite: purchases with balance, points and free plans, idempotency, auth, the API's
//! error format, the outbox relay, and migrations — all against real PostgreSQL and RabbitMQ.

mod api;
mod auth;
mod deploy;
mod idempotency;
mod migrations;
mod operations;
mod overload;
mod price_guard;
mod purchases;
mod relay;
mod relay_poison;
mod staff;
