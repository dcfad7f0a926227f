//! The report of `dataplane doctor` and `controlplane doctor`: one line per check, each
//! failure with the fix an operator should apply, and the exit status. Shared so that both
//! planes print the same shape. No check's text may hold a secret: checks describe where a
//! value comes from (redacted URLs, key ids), never the value.

use std::fmt;
use std::time::Duration;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Worth knowing, not wrong (does not fail the run).
    Warn,
    Fail,
}

/// One check: what was checked, what was found and, unless it passed, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

/// Every check of one run, in order.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail, None);
    }

    pub fn warn(
        &mut self,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(name, Status::Warn, detail, Some(fix.into()));
    }

    pub fn fail(
        &mut self,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(name, Status::Fail, detail, Some(fix.into()));
    }

    fn push(
        &mut self,
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        });
    }

    /// Whether nothing failed (warnings pass).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The failed checks' names.
    pub fn failures(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// Files a clock comparison: `skew` of `source`'s clock against this host's, failing
    /// beyond `limit` (budgets periods, token expiry and rate windows assume agreeing clocks).
    pub fn clock(&mut self, source: &str, skew: Duration, ahead: bool, limit: Duration) {
        let name = format!("clock skew vs {source}");
        let side = if ahead { "ahead of" } else { "behind" };
        let detail = format!("{source} is {} ms {side} this host", skew.as_millis());
        if skew <= limit {
            self.ok(name, detail);
        } else {
            self.fail(
                name,
                detail,
                format!(
                    "synchronise clocks (NTP/chrony) on this host and {source}; more than {} ms apart breaks rate-limit windows and budget periods",
                    limit.as_millis()
                ),
            );
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            writeln!(f, "{tag} {}: {}", c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "     fix: {fix}")?;
            }
        }
        let failed = self.failures().len();
        if failed == 0 {
            writeln!(f, "all {} checks passed", self.checks.len())
        } else {
            writeln!(f, "{failed} of {} checks failed", self.checks.len())
        }
    }
}

/// `url` without its user, password, path and query: safe to print.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        host.to_owned()
    } else {
        format!("{scheme}://{host}")
    }
}

/// The signed difference `theirs - ours` as (magnitude, whether theirs is ahead).
pub fn skew(
    ours: chrono::DateTime<chrono::Utc>,
    theirs: chrono::DateTime<chrono::Utc>,
) -> (Duration, bool) {
    let d = theirs - ours;
    (
        d.abs().to_std().unwrap_or_default(),
        d > chrono::TimeDelta::zero(),
    )
}

/// Redis at `url` (one server, a Cluster or a Sentinel-managed master, as
/// [`crate::redis_conn`] reads the URL): reachable, and its clock within `max_skew` of ours.
/// `fix` tells the operator what to do when it is not reachable. Both planes' `doctor` call it.
#[cfg(feature = "redis")]
pub async fn redis(url: &str, fix: &str, max_skew: Duration, report: &mut Report) {
    use crate::redis_conn::{RedisConn, RedisTarget};
    const WAIT: Duration = Duration::from_secs(3);
    let shown = redacted(url);
    let check = async {
        let target = RedisTarget {
            url,
            connect_timeout: WAIT,
            response_timeout: WAIT,
        };
        let mut conn = RedisConn::lazy(&target).map_err(|e| e.to_string())?;
        let before = chrono::Utc::now();
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((before, secs, micros))
    };
    match tokio::time::timeout(WAIT, check).await {
        Ok(Ok((before, secs, micros))) => {
            report.ok("redis", format!("reached {shown}"));
            let nanos = u32::try_from(micros.saturating_mul(1000)).unwrap_or(0);
            if let Some(theirs) = chrono::DateTime::from_timestamp(secs, nanos) {
                let (d, ahead) = skew(before, theirs);
                report.clock("redis", d, ahead, max_skew);
            }
        }
        Ok(Err(e)) => report.fail("redis", format!("cannot reach {shown}: {e}"), fix),
        Err(_) => report.fail("redis", format!("no answer from {shown} within 3 s"), fix),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_failure_fails_the_report_and_prints_its_fix() {
        let mut r = Report::default();
        r.ok("postgres", "reached");
        r.warn("grpc", "not listening", "start serve");
        assert!(r.passed());
        r.fail("redis", "connection refused", "start Redis");
        assert!(!r.passed());
        let text = r.to_string();
        assert!(
            text.contains("FAIL redis: connection refused\n     fix: start Redis"),
            "{text}"
        );
        assert!(text.ends_with("1 of 3 checks failed\n"), "{text}");
    }

    #[test]
    fn redacted_urls_lose_their_credentials() {
        assert_eq!(
            redacted("redis://:hunter2@cache:6379/0"),
            "redis://cache:6379"
        );
        assert_eq!(
            redacted("nats://u:p@n1:4222,n2:4222"),
            "nats://n1:4222,n2:4222"
        );
    }

    #[test]
    fn clocks_apart_by_more_than_the_limit_fail() {
        let now = chrono::Utc::now();
        let (d, ahead) = skew(now, now + chrono::TimeDelta::seconds(5));
        assert!(ahead && d == Duration::from_secs(5));
        let mut r = Report::default();
        r.clock("redis", d, ahead, Duration::from_secs(2));
        assert!(!r.passed());
    }
}
