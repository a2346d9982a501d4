//! Worker suite: the four effects of a paid order, exactly once, with retries, dead letters,
//! replays, crashes and broker disconnects — against real PostgreSQL and RabbitMQ.

mod chaos;
mod effects;
mod failures;
