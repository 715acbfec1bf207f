//! Counters for `/metrics` (Prometheus text format): every rejection the
//! server makes is counted, by kind.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Counter families, each with one label.
pub mod family {
    /// ERROR frames sent to users, by code.
    pub(crate) const USER_ERRORS: &str = "socp_user_errors_total";
    /// ERROR frames sent to servers, by code.
    pub(crate) const SERVER_ERRORS: &str = "socp_server_errors_total";
    /// Frames from server links dropped without an ERROR, by reason
    /// (`unread`, `own_echo`, `unanswered_error`, `directory_unverified`).
    pub const LINK_DROPPED: &str = "socp_link_frames_dropped_total";
    /// Connections the server closed, by WebSocket close code.
    pub(crate) const CLOSES: &str = "socp_connections_closed_total";
    /// Frames received, by kind of peer (`user`, `server`).
    pub(crate) const FRAMES_IN: &str = "socp_frames_received_total";
    /// Frames relayed by a linked server that could not be verified (their
    /// origin is unknown here, or the signature fails), dropped, by type.
    pub const RELAYED_UNVERIFIABLE: &str = "socp_relayed_unverifiable_total";
    /// Frames a linked server sent over its frame or byte budget, dropped.
    pub const LINK_OVER_BUDGET: &str = "socp_link_over_budget_total";
    /// Frames refused because the memory the server holds for their sender
    /// (`connection`) or for everyone (`server`) was at its budget.
    pub const MEMORY_REFUSED: &str = "socp_memory_budget_refused_total";
}

/// Shared counters (cheap: one short lock per event).
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Metrics {
    /// Add one to `family{label}`.
    pub(crate) fn inc(&self, family: &'static str, label: &str) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((family, label.to_owned())).or_default() += 1;
        }
    }

    /// The value of `family{label}`.
    pub fn get(&self, family: &'static str, label: &str) -> u64 {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&(family, label.to_owned())).copied())
            .unwrap_or(0)
    }

    /// Prometheus text: every counter, then the given gauges.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let label_name = |family: &str| match family {
            family::CLOSES => "code",
            family::FRAMES_IN => "from",
            family::RELAYED_UNVERIFIABLE => "type",
            family::LINK_OVER_BUDGET => "kind",
            family::MEMORY_REFUSED => "budget",
            _ => "code",
        };
        if let Ok(c) = self.counters.lock() {
            let mut last = "";
            for ((family, label), value) in c.iter() {
                if *family != last {
                    let _ = writeln!(out, "# TYPE {family} counter");
                    last = family;
                }
                let label = label.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    out,
                    "{family}{{{}=\"{label}\"}} {value}",
                    label_name(family)
                );
            }
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.inc(family::USER_ERRORS, "RATE_LIMITED");
        m.inc(family::USER_ERRORS, "RATE_LIMITED");
        m.inc(family::CLOSES, "1008");
        assert_eq!(m.get(family::USER_ERRORS, "RATE_LIMITED"), 2);
        assert_eq!(m.get(family::USER_ERRORS, "BAD_KEY"), 0);
        let text = m.render(&[("socp_local_users", "users attached here", 3.0)]);
        assert!(
            text.contains("socp_user_errors_total{code=\"RATE_LIMITED\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("socp_connections_closed_total{code=\"1008\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE socp_local_users gauge\nsocp_local_users 3\n"),
            "{text}"
        );
    }
}
