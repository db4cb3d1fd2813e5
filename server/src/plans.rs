//! Plans: how many new jobs a user may submit per UTC calendar month and per
//! rolling 60 minutes.
//!
//! The built-in plans are free (5 a month), premium (50) and enterprise
//! (unlimited), each 10 an hour. A TOML plans file (`--plans`) overrides any of
//! their limits and adds plans of its own:
//!
//! ```toml
//! [plans.free]
//! monthly_jobs = 3          # -1 means unlimited
//!
//! [plans.enterprise]
//! hourly_jobs = 1000
//!
//! [plans.team]              # a new plan: monthly_jobs is required
//! monthly_jobs = 500
//! hourly_jobs = 50          # optional, 10 when left out
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The plan of a user who has none set.
pub const DEFAULT_PLAN: &str = "free";
/// The hourly limit of a plan that does not set one.
pub const DEFAULT_HOURLY_JOBS: u32 = 10;
/// The longest plan name (the column is VARCHAR(50)).
pub const MAX_PLAN_NAME_LEN: usize = 50;

/// A limit on new jobs in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// No limit.
    Unlimited,
    /// At most this many.
    AtMost(u32),
}

impl Limit {
    /// The limit as the API reports it: -1 for unlimited.
    pub fn as_i64(self) -> i64 {
        match self {
            Self::Unlimited => -1,
            Self::AtMost(n) => i64::from(n),
        }
    }

    /// Whether `used` new jobs leave room for one more.
    pub fn allows_one_more(self, used: i64) -> bool {
        match self {
            Self::Unlimited => true,
            Self::AtMost(n) => used < i64::from(n),
        }
    }

    fn from_file(value: i64) -> Result<Self, String> {
        match value {
            -1 => Ok(Self::Unlimited),
            0..=1_000_000_000 => Ok(Self::AtMost(
                u32::try_from(value).map_err(|e| e.to_string())?,
            )),
            _ => Err(format!(
                "{value} is not a limit: use -1 (unlimited) or 0 to 1000000000"
            )),
        }
    }
}

/// One plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its name, as users are assigned to it.
    pub name: String,
    /// New jobs per UTC calendar month.
    pub monthly_jobs: Limit,
    /// New jobs per rolling 60 minutes.
    pub hourly_jobs: Limit,
}

/// Every plan the server knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plans {
    plans: BTreeMap<String, Plan>,
}

/// Why a plans file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlansError {
    /// The file could not be read.
    #[error("plans file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("plans file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the plan or key.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    #[serde(default)]
    plans: BTreeMap<String, PlanEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    monthly_jobs: Option<i64>,
    hourly_jobs: Option<i64>,
}

impl Default for Plans {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Plans {
    /// free 5/month, premium 50/month, enterprise unlimited; each 10/hour.
    pub fn builtin() -> Self {
        let hourly = Limit::AtMost(DEFAULT_HOURLY_JOBS);
        let plans = [
            ("free", Limit::AtMost(5)),
            ("premium", Limit::AtMost(50)),
            ("enterprise", Limit::Unlimited),
        ]
        .into_iter()
        .map(|(name, monthly_jobs)| {
            let plan = Plan {
                name: name.to_owned(),
                monthly_jobs,
                hourly_jobs: hourly,
            };
            (name.to_owned(), plan)
        })
        .collect();
        Self { plans }
    }

    /// The built-in plans with the file at `path` applied.
    pub fn load(path: &Path) -> Result<Self, PlansError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlansError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| PlansError::Invalid {
            path: shown,
            message,
        })
    }

    /// The built-in plans with the TOML document `text` applied.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PlansFile =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let mut plans = Self::builtin();
        for (name, entry) in file.plans {
            check_plan_name(&name).map_err(|e| format!("plan `{name}`: {e}"))?;
            let limit = |key: &str, value: Option<i64>| {
                value
                    .map(Limit::from_file)
                    .transpose()
                    .map_err(|e| format!("plans.{name}.{key}: {e}"))
            };
            let monthly = limit("monthly_jobs", entry.monthly_jobs)?;
            let hourly = limit("hourly_jobs", entry.hourly_jobs)?;
            match plans.plans.get_mut(&name) {
                Some(plan) => {
                    plan.monthly_jobs = monthly.unwrap_or(plan.monthly_jobs);
                    plan.hourly_jobs = hourly.unwrap_or(plan.hourly_jobs);
                }
                None => {
                    let monthly_jobs = monthly
                        .ok_or_else(|| format!("plans.{name}: a new plan needs monthly_jobs"))?;
                    let hourly_jobs = hourly.unwrap_or(Limit::AtMost(DEFAULT_HOURLY_JOBS));
                    plans.plans.insert(
                        name.clone(),
                        Plan {
                            name,
                            monthly_jobs,
                            hourly_jobs,
                        },
                    );
                }
            }
        }
        Ok(plans)
    }

    /// The plan called `name`.
    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// The plan of a user whose stored plan is `stored` (`None`: no plan set). A
    /// stored plan that the configuration no longer has counts as the default
    /// plan, so that a removed plan never means "no limits".
    pub fn effective(&self, stored: Option<&str>) -> &Plan {
        if let Some(plan) = stored.and_then(|name| self.get(name)) {
            return plan;
        }
        if let Some(name) = stored {
            tracing::warn!(
                plan = name,
                "a user is on a plan the configuration does not have: applying the default plan"
            );
        }
        self.default_plan()
    }

    /// The plan of users with none set.
    pub fn default_plan(&self) -> &Plan {
        self.plans
            .get(DEFAULT_PLAN)
            // `builtin` inserts it and `parse` only ever changes or adds plans.
            .unwrap_or_else(|| unreachable!("the default plan is built in"))
    }

    /// The plan names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plans.keys().map(String::as_str)
    }
}

/// A plan name: lower-case letters, digits, `_` and `-`, starting with a letter.
pub fn check_plan_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !starts_with_letter
        || name.len() > MAX_PLAN_NAME_LEN
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(format!(
            "a plan name is 1 to {MAX_PLAN_NAME_LEN} lower-case letters, digits, `_` or `-`, starting with a letter"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_plans_match_the_contract() {
        let plans = Plans::builtin();
        let limits = |name| {
            let plan = plans.get(name).unwrap();
            (plan.monthly_jobs.as_i64(), plan.hourly_jobs.as_i64())
        };
        assert_eq!(limits("free"), (5, 10));
        assert_eq!(limits("premium"), (50, 10));
        assert_eq!(limits("enterprise"), (-1, 10));
        assert_eq!(plans.effective(None).name, "free");
        assert_eq!(plans.effective(Some("gone")).name, "free");
        assert_eq!(plans.effective(Some("premium")).name, "premium");
    }

    #[test]
    fn a_file_overrides_and_adds() {
        let plans = Plans::parse(
            "[plans.free]\nmonthly_jobs = 3\n[plans.enterprise]\nhourly_jobs = -1\n[plans.team]\nmonthly_jobs = 500\n",
        )
        .unwrap();
        let free = plans.get("free").unwrap();
        assert_eq!(
            (free.monthly_jobs, free.hourly_jobs),
            (Limit::AtMost(3), Limit::AtMost(10))
        );
        assert_eq!(
            plans.get("enterprise").unwrap().hourly_jobs,
            Limit::Unlimited
        );
        assert_eq!(plans.get("team").unwrap().monthly_jobs, Limit::AtMost(500));
        assert_eq!(
            plans.names().collect::<Vec<_>>(),
            ["enterprise", "free", "premium", "team"]
        );
    }

    #[test]
    fn malformed_files_are_refused_with_the_problem_named() {
        for (text, expected) in [
            ("[plans.free]\nmontly_jobs = 3\n", "montly_jobs"),
            (
                "[plans.free]\nmonthly_jobs = -2\n",
                "plans.free.monthly_jobs",
            ),
            ("[plans.free]\nmonthly_jobs = \"five\"\n", "monthly_jobs"),
            (
                "[plans.team]\nhourly_jobs = 5\n",
                "a new plan needs monthly_jobs",
            ),
            ("[plans.Team]\nmonthly_jobs = 5\n", "plan `Team`"),
            ("[plan.free]\nmonthly_jobs = 5\n", "plan"),
            ("[plans.free\n", "TOML"),
        ] {
            let error = Plans::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
