//! The limit decision: given a user's plan and usage at one instant, may they
//! submit one more new job, and if not, why and until when.
//!
//! What counts: every job the user submitted that is not a retry (`retry_count =
//! 0`), whatever became of it (cancelled and failed jobs count: the submission was
//! accepted). Deduplicated submissions create nothing and count nothing; retries
//! are free. The month is the UTC calendar month of the instant; the hour is the
//! 60 minutes before it (a job counts while `created_at > now - 60 min`).
//!
//! The rolling hour is checked first, then the month.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

use crate::plans::{Limit, Plan};

/// Usage in both windows at one instant, as storage counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The instant of the decision.
    pub now: DateTime<Utc>,
    /// Jobs counted this UTC month.
    pub monthly_used: i64,
    /// Jobs counted in the last 60 minutes.
    pub hourly_used: i64,
    /// When enough of the hour's jobs have left the window for one more to fit
    /// (with an unlimited hourly plan: when the oldest leaves); `None` when the
    /// hour counts nothing.
    pub hourly_slot_at: Option<DateTime<Utc>>,
}

/// One window's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Jobs counted.
    pub used: i64,
    /// The plan's limit.
    pub limit: Limit,
    /// When the window next frees a slot (see the proto's `QuotaWindow`).
    pub resets_at: Option<DateTime<Utc>>,
}

/// Why a new submission is refused now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The rolling hour is full.
    RateLimited {
        /// Jobs in the last 60 minutes.
        used: i64,
        /// The plan's hourly limit.
        limit: i64,
        /// When a slot frees (`None`: never, for a limit of 0).
        resets_at: Option<DateTime<Utc>>,
        /// How long until then.
        retry_after: Option<std::time::Duration>,
    },
    /// The month's quota is spent.
    QuotaExceeded {
        /// Jobs this month.
        used: i64,
        /// The plan's monthly limit.
        limit: i64,
        /// The first instant of the next UTC month.
        resets_at: DateTime<Utc>,
    },
}

/// A user's standing at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaStatus {
    /// The plan applied.
    pub plan: String,
    /// This UTC month.
    pub monthly: Window,
    /// The last 60 minutes.
    pub hourly: Window,
    /// `None` when one more new job is allowed.
    pub refusal: Option<Refusal>,
}

/// The length of the rolling window.
pub fn hour() -> Duration {
    Duration::minutes(60)
}

/// The first instant of the UTC month of `at`, and of the month after.
pub fn month_bounds(at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc
        .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(at);
    let (year, month) = if at.month() == 12 {
        (at.year() + 1, 1)
    } else {
        (at.year(), at.month() + 1)
    };
    let next = Utc
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or(at);
    (start, next)
}

/// Decides whether `plan` allows one more new job given `usage`.
pub fn decide(plan: &Plan, usage: Usage) -> QuotaStatus {
    let (_, next_month) = month_bounds(usage.now);
    let monthly = Window {
        used: usage.monthly_used,
        limit: plan.monthly_jobs,
        resets_at: Some(next_month),
    };
    let hourly = Window {
        used: usage.hourly_used,
        limit: plan.hourly_jobs,
        resets_at: usage.hourly_slot_at,
    };
    let refusal = if !plan.hourly_jobs.allows_one_more(usage.hourly_used) {
        Some(Refusal::RateLimited {
            used: usage.hourly_used,
            limit: plan.hourly_jobs.as_i64(),
            resets_at: usage.hourly_slot_at,
            retry_after: usage
                .hourly_slot_at
                .map(|at| (at - usage.now).to_std().unwrap_or_default()),
        })
    } else if !plan.monthly_jobs.allows_one_more(usage.monthly_used) {
        Some(Refusal::QuotaExceeded {
            used: usage.monthly_used,
            limit: plan.monthly_jobs.as_i64(),
            resets_at: next_month,
        })
    } else {
        None
    };
    QuotaStatus {
        plan: plan.name.clone(),
        monthly,
        hourly,
        refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn plan(monthly: Limit, hourly: Limit) -> Plan {
        Plan {
            name: "p".into(),
            monthly_jobs: monthly,
            hourly_jobs: hourly,
        }
    }

    #[test]
    fn months_roll_over_at_utc_midnight_and_at_the_year_end() {
        assert_eq!(
            month_bounds(at("2026-11-29T23:59:59Z")),
            (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        );
        assert_eq!(
            month_bounds(at("2026-12-31T23:00:00-02:00")),
            (at("2027-01-01T00:00:00Z"), at("2027-02-01T00:00:00Z"))
        );
    }

    #[test]
    fn the_hour_is_checked_before_the_month() {
        let now = at("2026-11-29T12:00:00Z");
        let slot = at("2026-11-29T12:30:00Z");
        let usage = Usage {
            now,
            monthly_used: 5,
            hourly_used: 10,
            hourly_slot_at: Some(slot),
        };
        let status = decide(&plan(Limit::AtMost(5), Limit::AtMost(10)), usage);
        assert_eq!(
            status.refusal,
            Some(Refusal::RateLimited {
                used: 10,
                limit: 10,
                resets_at: Some(slot),
                retry_after: Some(std::time::Duration::from_secs(1800))
            })
        );
        let status = decide(&plan(Limit::AtMost(5), Limit::AtMost(11)), usage);
        assert_eq!(
            status.refusal,
            Some(Refusal::QuotaExceeded {
                used: 5,
                limit: 5,
                resets_at: at("2026-12-01T00:00:00Z")
            })
        );
        let status = decide(&plan(Limit::Unlimited, Limit::Unlimited), usage);
        assert_eq!(status.refusal, None);
        assert_eq!(status.monthly.limit.as_i64(), -1);
    }
}
