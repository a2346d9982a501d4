//! Prometheus text metrics, kept in process. Counters are labelled maps behind a mutex: the
//! gateway's label sets are small and fixed (routes, pay methods, outcomes), so this stays cheap
//! without a metrics framework. Outbox lag is read from the database at scrape time, so it is
//! right even when the relay runs in another process.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
}

/// Fixed buckets in seconds, suited to request and delivery latencies.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Help text for each metric name.
fn help(name: &str) -> &'static str {
    match name {
        "memberline_http_requests_total" => "HTTP requests by method, route and status.",
        "memberline_http_request_duration_seconds" => "HTTP request latency by route.",
        "memberline_orders_total" => "Order placements by pay method and outcome.",
        "memberline_outbox_published_total" => "Outbox events published with a positive confirm.",
        "memberline_outbox_publish_failures_total" => {
            "Outbox publishes that were nacked, returned, timed out or failed."
        }
        "memberline_worker_deliveries_total" => {
            "Deliveries by consumer and outcome (applied, duplicate, retried, dead_lettered)."
        }
        "memberline_worker_handling_seconds" => "Time to handle one delivery, by consumer.",
        "memberline_worker_event_to_effect_seconds" => {
            "Time from an event's occurrence to its committed effect, by consumer."
        }
        _ => "Memberline metric.",
    }
}

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        *self
            .counters
            .lock()
            .expect("metrics lock poisoned")
            .entry((name, labels))
            .or_default() += n;
    }

    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let mut map = self.histograms.lock().expect("metrics lock poisoned");
        let h = map.entry((name, labels)).or_default();
        for (i, upper) in BUCKETS.iter().enumerate() {
            if seconds <= *upper {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The value of one counter (tests and the relay's own logs).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.counters
            .lock()
            .expect("metrics lock poisoned")
            .get(&(name, labels))
            .copied()
            .unwrap_or(0)
    }

    /// Renders every counter and histogram, then the given gauges, as Prometheus text.
    pub fn render(&self, gauges: &[(&'static str, &'static str, f64)]) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in self.counters.lock().expect("metrics lock poisoned").iter() {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", help(name));
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", fmt_labels(labels, None));
        }
        for ((name, labels), h) in self
            .histograms
            .lock()
            .expect("metrics lock poisoned")
            .iter()
        {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", help(name));
                last = name;
            }
            for (i, upper) in BUCKETS.iter().enumerate() {
                let le = upper.to_string();
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(labels, Some(&le)),
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                fmt_labels(labels, Some("+Inf")),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
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

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_labels_and_help() {
        let m = Metrics::default();
        m.inc(
            "memberline_orders_total",
            &[("pay_method", "points"), ("outcome", "paid")],
        );
        m.inc(
            "memberline_orders_total",
            &[("pay_method", "points"), ("outcome", "paid")],
        );
        let text = m.render(&[("memberline_outbox_unpublished", "Rows waiting.", 3.0)]);
        assert!(text.contains("# TYPE memberline_orders_total counter"));
        assert!(text.contains("memberline_orders_total{pay_method=\"points\",outcome=\"paid\"} 2"));
        assert!(text.contains("memberline_outbox_unpublished 3"));
    }

    #[test]
    fn a_histogram_counts_into_every_bucket_above_the_value() {
        let m = Metrics::default();
        m.observe(
            "memberline_http_request_duration_seconds",
            &[("route", "/x")],
            0.02,
        );
        let text = m.render(&[]);
        assert!(text.contains("le=\"0.01\"} 0"));
        assert!(text.contains("le=\"0.025\"} 1"));
        assert!(text.contains("le=\"+Inf\"} 1"));
    }
}
