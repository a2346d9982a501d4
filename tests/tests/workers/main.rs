//! Worker suite: the four effects of a paid order, exactly once, with retries, dead letters,
//! replays, crashes and broker disconnects — against real PostgreSQL and RabbitMQ.

mod backpressure;
mod chaos;
mod dead_letter_peeks;
mod effects;
mod failures;
mod processes;
mod retention;
mod stacking;
mod topology;
