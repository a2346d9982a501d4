//! A buyer's membership as read: derived from their membership periods at an instant, never
//! stored as a flag (the membership worker writes the periods). Shown by `/v1/me` and the
//! buyer's order stream.

use chrono::{DateTime, Utc};
use memberline_schema::entities::membership_period;
use serde::Serialize;

/// Where a buyer's membership stands at the moment of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MembershipStatus {
    /// Never a member.
    None,
    /// Inside a period, or permanent.
    Active,
    /// Every period has ended.
    Expired,
}

/// Membership derived from the buyer's periods at the moment of the request.
#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MembershipView {
    pub status: MembershipStatus,
    /// Start of the current (or last) uninterrupted run of periods.
    pub since: Option<DateTime<Utc>>,
    /// End of the last period; `null` when permanent or never a member.
    pub expires_at: Option<DateTime<Utc>>,
    pub permanent: bool,
    /// Whole days left, rounded up; 0 when not active.
    pub days_left: i64,
}

/// Derives the membership from periods: permanent beats everything; otherwise the status is
/// active while `now` is inside a period, and `since` is where the run of back-to-back periods
/// that ends last begins.
pub fn membership_at(periods: &[membership_period::Model], now: DateTime<Utc>) -> MembershipView {
    if let Some(p) = periods
        .iter()
        .filter(|p| p.permanent)
        .min_by_key(|p| p.starts_at)
    {
        return MembershipView {
            status: MembershipStatus::Active,
            since: Some(p.starts_at),
            expires_at: None,
            permanent: true,
            days_left: 0,
        };
    }
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = periods
        .iter()
        .filter_map(|p| p.ends_at.map(|e| (p.starts_at, e)))
        .collect();
    if spans.is_empty() {
        return MembershipView {
            status: MembershipStatus::None,
            since: None,
            expires_at: None,
            permanent: false,
            days_left: 0,
        };
    }
    spans.sort();
    // Merge touching or overlapping spans; the last merged run is the current one.
    let mut run = spans[0];
    for &(start, end) in &spans[1..] {
        if start <= run.1 {
            run.1 = run.1.max(end);
        } else {
            run = (start, end);
        }
    }
    let active = run.0 <= now && now < run.1;
    let days_left = if active {
        let secs = (run.1 - now).num_seconds();
        (secs + 86_399) / 86_400
    } else {
        0
    };
    MembershipView {
        status: if active {
            MembershipStatus::Active
        } else {
            MembershipStatus::Expired
        },
        since: Some(run.0),
        expires_at: Some(run.1),
        permanent: false,
        days_left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn period(start: DateTime<Utc>, days: Option<i64>) -> membership_period::Model {
        membership_period::Model {
            id: 1,
            user_id: memberline_schema::ids::BuyerId(1),
            order_id: memberline_schema::ids::OrderId(1),
            starts_at: start,
            ends_at: days.map(|d| start + Duration::days(d)),
            permanent: days.is_none(),
            created_at: start,
            removed_at: None,
        }
    }

    #[test]
    fn no_periods_means_no_membership() {
        assert_eq!(
            membership_at(&[], Utc::now()).status,
            MembershipStatus::None
        );
    }

    #[test]
    fn stacked_periods_read_as_one_run_with_days_left() {
        let now = Utc::now();
        let start = now - Duration::days(10);
        let view = membership_at(
            &[
                period(start, Some(30)),
                period(start + Duration::days(30), Some(30)),
            ],
            now,
        );
        assert_eq!(view.status, MembershipStatus::Active);
        assert_eq!(view.since, Some(start));
        assert_eq!(view.days_left, 50);
    }

    #[test]
    fn a_lapsed_membership_is_expired() {
        let now = Utc::now();
        let view = membership_at(&[period(now - Duration::days(40), Some(30))], now);
        assert_eq!(view.status, MembershipStatus::Expired);
        assert_eq!(view.days_left, 0);
    }

    #[test]
    fn a_permanent_period_makes_the_membership_permanent() {
        let now = Utc::now();
        let view = membership_at(
            &[
                period(now - Duration::days(400), Some(30)),
                period(now, None),
            ],
            now,
        );
        assert!(view.permanent);
        assert_eq!(view.expires_at, None);
        assert_eq!(view.status, MembershipStatus::Active);
    }
}
