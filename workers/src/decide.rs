//! What to do with a delivery after its handler ran: a pure function of the result, the attempt
//! number and the retry ladder, unit-tested on its own. The runtime only carries it out.

use std::fmt;

/// What a handler made of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The effect was applied and committed.
    Applied,
    /// The event (or its business key) was applied before; nothing changed.
    Duplicate,
}

/// Why a handler failed.
#[derive(Debug)]
pub enum HandlerError {
    /// Might succeed later: database or broker unavailable, lock timeout, a webhook down.
    Transient(anyhow::Error),
    /// Will never succeed as is: unknown order, business rule broken, bad payload.
    Permanent(anyhow::Error),
    /// The work was never tried: no pooled connection in time. Back-pressure, not a failure of
    /// this event, so it costs no attempt.
    Backpressure(anyhow::Error),
}

impl HandlerError {
    pub fn transient(e: impl Into<anyhow::Error>) -> Self {
        Self::Transient(e.into())
    }
    pub fn permanent(e: impl Into<anyhow::Error>) -> Self {
        Self::Permanent(e.into())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Transient(e) => write!(f, "transient: {e:#}"),
            HandlerError::Permanent(e) => write!(f, "permanent: {e:#}"),
            HandlerError::Backpressure(e) => write!(f, "back-pressure: {e:#}"),
        }
    }
}

impl From<sea_orm::DbErr> for HandlerError {
    /// Integrity and data errors (SQLSTATE classes 22 and 23) are permanent: retrying the same
    /// statement gives the same answer. A wait for a pooled connection that ran out of time is
    /// back-pressure. Everything else (lost connections, serialization failures, deadlocks, lock
    /// and statement timeouts) is transient.
    fn from(e: sea_orm::DbErr) -> Self {
        if memberline_platform::db::is_pool_timeout(&e) {
            return HandlerError::Backpressure(e.into());
        }
        let code = match &e {
            sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(s))
            | sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(s)) => match &**s {
                sea_orm::sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            },
            _ => None,
        };
        match code.as_deref() {
            Some(c) if c.starts_with("22") || c.starts_with("23") => {
                HandlerError::Permanent(e.into())
            }
            _ => HandlerError::Transient(e.into()),
        }
    }
}

/// The runtime's next step for a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Done (applied or duplicate): acknowledge.
    Ack,
    /// Park in retry tier `tier` (0-based), then come back with attempt + 1.
    Retry { tier: usize },
    /// Park in the first retry tier and come back with the same attempt number: the work was
    /// not tried (back-pressure), so no attempt is spent.
    Defer,
    /// Give up: move to the dead-letter queue with this reason.
    DeadLetter { reason: String },
}

/// How many times one delivery may be deferred for back-pressure before a wait for a connection
/// counts as a failed attempt after all: with deliveries bounded by connection permits, a pool
/// that keeps timing out means the database is unavailable, which must climb the retry ladder
/// (and end in the dead-letter queue) like any other outage instead of cycling forever.
pub const MAX_DEFERRALS: u32 = 10;

/// [`decide`], with back-pressure deferred at most [`MAX_DEFERRALS`] times per delivery.
pub fn decide_bounded(
    result: &Result<Outcome, HandlerError>,
    attempt: u32,
    deferrals: u32,
    tiers: usize,
) -> Decision {
    match result {
        Err(HandlerError::Backpressure(e)) if deferrals >= MAX_DEFERRALS => decide(
            &Err(HandlerError::Transient(anyhow::anyhow!(
                "{e:#} (deferred {deferrals} times)"
            ))),
            attempt,
            tiers,
        ),
        _ => decide(result, attempt, tiers),
    }
}

/// Maps a handler result to a decision. `attempt` counts earlier failed attempts (0 on the first
/// delivery); `tiers` is the length of the retry ladder. A transient failure climbs the ladder
/// one tier per attempt; after the last tier it is dead-lettered as exhausted. Back-pressure is
/// deferred without spending an attempt (settings refuse a ladder without tiers; without one,
/// back-pressure would count as a transient failure).
pub fn decide(result: &Result<Outcome, HandlerError>, attempt: u32, tiers: usize) -> Decision {
    match result {
        Ok(_) => Decision::Ack,
        Err(HandlerError::Backpressure(_)) if tiers > 0 => Decision::Defer,
        Err(HandlerError::Permanent(e)) => Decision::DeadLetter {
            reason: format!("permanent: {e:#}"),
        },
        Err(HandlerError::Transient(e) | HandlerError::Backpressure(e)) => {
            let attempt = attempt as usize;
            if attempt < tiers {
                Decision::Retry { tier: attempt }
            } else {
                Decision::DeadLetter {
                    reason: format!("retries exhausted after {} attempts: {e:#}", attempt + 1),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_pressure_is_deferred_a_bounded_number_of_times_then_counts_as_an_attempt() {
        let waited = || -> Result<Outcome, HandlerError> {
            Err(HandlerError::Backpressure(anyhow::anyhow!(
                "pool timed out"
            )))
        };
        assert_eq!(decide_bounded(&waited(), 0, 0, 5), Decision::Defer);
        assert_eq!(
            decide_bounded(&waited(), 0, MAX_DEFERRALS - 1, 5),
            Decision::Defer
        );
        assert_eq!(
            decide_bounded(&waited(), 0, MAX_DEFERRALS, 5),
            Decision::Retry { tier: 0 }
        );
        assert!(matches!(
            decide_bounded(&waited(), 5, MAX_DEFERRALS, 5),
            Decision::DeadLetter { .. }
        ));
    }

    fn transient() -> Result<Outcome, HandlerError> {
        Err(HandlerError::transient(anyhow::anyhow!("db down")))
    }

    #[test]
    fn success_and_duplicates_are_acked() {
        assert_eq!(decide(&Ok(Outcome::Applied), 0, 5), Decision::Ack);
        assert_eq!(decide(&Ok(Outcome::Duplicate), 3, 5), Decision::Ack);
    }

    #[test]
    fn a_transient_failure_climbs_the_ladder_one_tier_per_attempt() {
        for attempt in 0..5 {
            assert_eq!(
                decide(&transient(), attempt, 5),
                Decision::Retry {
                    tier: attempt as usize
                }
            );
        }
    }

    #[test]
    fn a_transient_failure_after_the_last_tier_is_dead_lettered_as_exhausted() {
        match decide(&transient(), 5, 5) {
            Decision::DeadLetter { reason } => {
                assert!(reason.contains("exhausted after 6 attempts"), "{reason}");
                assert!(reason.contains("db down"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_permanent_failure_is_dead_lettered_at_once() {
        let r = Err(HandlerError::permanent(anyhow::anyhow!("unknown order 7")));
        match decide(&r, 0, 5) {
            Decision::DeadLetter { reason } => assert!(reason.contains("unknown order 7")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn back_pressure_is_deferred_to_the_first_tier_at_any_attempt_without_spending_one() {
        let waited = || {
            Err(HandlerError::Backpressure(anyhow::anyhow!(
                "pool timed out while waiting for an open connection"
            )))
        };
        // Even on what would be the last attempt: a deferral never exhausts the ladder.
        for attempt in [0, 1, 4, 5, 40] {
            assert_eq!(decide(&waited(), attempt, 5), Decision::Defer);
        }
    }

    #[test]
    fn a_pool_timeout_is_back_pressure_and_a_lost_connection_is_transient() {
        let timeout = sea_orm::DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout);
        assert!(matches!(
            HandlerError::from(timeout),
            HandlerError::Backpressure(_)
        ));
        let lost = sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal("reset".into()));
        assert!(matches!(
            HandlerError::from(lost),
            HandlerError::Transient(_)
        ));
    }

    #[test]
    fn without_a_ladder_a_transient_failure_goes_straight_to_dead_letters() {
        assert!(matches!(
            decide(&transient(), 0, 0),
            Decision::DeadLetter { .. }
        ));
    }
}
