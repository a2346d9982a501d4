//! Prometheus metrics through `prometheus-client` (the Prometheus project's own Rust client).
//!
//! One [`Metrics`] per process (tests build several, one per app, so nothing is global). Each
//! family is a typed label set; an update takes a shared read lock on its family and then
//! atomics, so no request waits on another. Label values come from closed sets only (routes,
//! methods, pay methods, outcomes, consumers): an unknown HTTP method or path is recorded as
//! `other`, so a client cannot grow the label map.
//!
//! Names are those dashboards already use: counters render with the `_total` suffix
//! (`memberline_orders_total`), histograms with `_bucket`, `_sum` and `_count`.

use memberline_schema::states::{NotificationOutcome, PayMethod, Provider};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Declares a closed set of metric label values, each with its text once.
macro_rules! outcomes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
    };
}

outcomes! {
    /// How a transaction shared by several jobs (lanes) or deliveries (workers) ended.
    pub enum BatchOutcome {
        /// It committed with every one applied.
        Committed = "committed",
        /// It failed; each was run on its own.
        Split = "split",
    }
}

outcomes! {
    /// What became of one settled delivery.
    pub enum DeliveryOutcome {
        Applied = "applied",
        /// Applied before: acked without effect.
        Duplicate = "duplicate",
        /// Sent to a retry tier.
        Retried = "retried",
        /// Given back without costing an attempt (no connection permit in time).
        Deferred = "deferred",
        DeadLettered = "dead_lettered",
    }
}

outcomes! {
    /// One channel message send attempt.
    pub enum ChannelOutcome {
        Delivered = "delivered",
        /// Failed; tried again later.
        Retried = "retried",
        /// Failed for the last time.
        Failed = "failed",
        /// Not a message this release can read: set aside for an operator, never sent.
        Unreadable = "unreadable",
    }
}

outcomes! {
    /// What the payment lifecycle job set out to do with an order.
    pub enum LifecycleAction {
        /// Close an expired pending order.
        Expire = "expire",
        /// Ask the provider about a pending order.
        Reconcile = "reconcile",
        /// Ask again about a refund an admin asked for.
        Refund = "refund",
        /// Refund a payment that came after its order was closed.
        LateRefund = "late_refund",
    }
}

outcomes! {
    /// What one step of the payment lifecycle came to.
    pub enum LifecycleOutcome {
        Closed = "closed",
        NotPending = "not_pending",
        Paid = "paid",
        AlreadyPaid = "already_paid",
        LatePayment = "late_payment",
        NotEligible = "not_eligible",
        Flagged = "flagged",
        Unpaid = "unpaid",
        Refunded = "refunded",
        Processing = "processing",
        Failed = "failed",
        Refused = "refused",
        Error = "error",
    }
}

/// What became of one order placement attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderOutcome {
    /// Paid in the same transaction (balance, points, free).
    Paid,
    /// Created for a provider payment.
    PendingPayment,
    /// The answer of an earlier request under the same key.
    Replayed,
    /// Refused, with this error code.
    Refused(&'static str),
}

impl OrderOutcome {
    /// The label value: the outcome, or the refusal's code.
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderOutcome::Paid => "paid",
            OrderOutcome::PendingPayment => "pending_payment",
            OrderOutcome::Replayed => "replayed",
            OrderOutcome::Refused(code) => code,
        }
    }
}

/// Fixed buckets in seconds, suited to request and delivery latencies.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type Latency<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrderLabels {
    pub pay_method: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub consumer: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    pub provider: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LifecycleLabels {
    pub provider: &'static str,
    pub action: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub lane: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneNameLabels {
    pub lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Every metric a Memberline process reports.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Latency<RouteLabels>,
    orders: Family<OrderLabels, Counter>,
    outbox_published: Counter,
    outbox_publish_failures: Counter,
    outbox_unpublished: Gauge<f64, AtomicU64>,
    outbox_oldest_age: Gauge<f64, AtomicU64>,
    outbox_quarantined: Gauge<f64, AtomicU64>,
    worker_deliveries: Family<DeliveryLabels, Counter>,
    worker_batches: Family<DeliveryLabels, Counter>,
    lane_batches: Family<LaneLabels, Counter>,
    lane_waiting: Family<LaneNameLabels, Gauge>,
    worker_handling: Latency<ConsumerLabels>,
    worker_event_to_effect: Latency<ConsumerLabels>,
    channel_deliveries: Family<OutcomeLabels, Counter>,
    payment_notifications: Family<NotificationLabels, Counter>,
    payment_lifecycle: Family<LifecycleLabels, Counter>,
    order_streams: Gauge,
    order_watch_reads: Counter,
}

/// Registers `metric` under `name` and hands it back (families and counters are handles onto
/// shared values: the registry and the struct see the same numbers).
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

fn latency<L>() -> Latency<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let r = &mut r;
        let http_requests = registered(
            r,
            "memberline_http_requests",
            "HTTP requests by method, route and status.",
            Family::default(),
        );
        let http_duration = registered(
            r,
            "memberline_http_request_duration_seconds",
            "HTTP request latency by route.",
            latency(),
        );
        let payment_notifications = registered(
            r,
            "memberline_payment_notifications",
            "Provider notifications by provider and outcome (applied, duplicate, late_payment, \
             ignored, flagged_*, or rejected_* when the signature or timestamp did not verify).",
            Family::default(),
        );
        let payment_lifecycle = registered(
            r,
            "memberline_payment_lifecycle",
            "Payment lifecycle steps by provider, action (expire, reconcile, refund, late_refund) \
             and outcome (closed, paid, already_paid, late_payment, flagged, not_pending, unpaid, \
             refunded, processing, refused, failed, error).",
            Family::default(),
        );
        let order_streams = registered(
            r,
            "memberline_order_streams",
            "Buyers' order streams open on this gateway instance.",
            Gauge::default(),
        );
        let order_watch_reads = registered(
            r,
            "memberline_order_watch_reads",
            "Reads of the orders that buyers' streams follow (one query for many orders and \
             sockets).",
            Counter::default(),
        );
        let orders = registered(
            r,
            "memberline_orders",
            "Order placements by pay method and outcome.",
            Family::default(),
        );
        let outbox_published = registered(
            r,
            "memberline_outbox_published",
            "Outbox events published with a positive confirm.",
            Counter::default(),
        );
        let outbox_publish_failures = registered(
            r,
            "memberline_outbox_publish_failures",
            "Outbox publishes that were nacked, returned, timed out or failed.",
            Counter::default(),
        );
        let outbox_unpublished = registered(
            r,
            "memberline_outbox_unpublished",
            "Outbox rows committed but not yet confirmed by the broker (-1: database unreachable).",
            Gauge::default(),
        );
        let outbox_oldest_age = registered(
            r,
            "memberline_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row, in seconds.",
            Gauge::default(),
        );
        let outbox_quarantined = registered(
            r,
            "memberline_outbox_quarantined",
            "Outbox rows quarantined after too many failed publishes, waiting for an operator.",
            Gauge::default(),
        );
        let worker_deliveries = registered(
            r,
            "memberline_worker_deliveries",
            "Deliveries by consumer and outcome (applied, duplicate, retried, deferred, dead_lettered).",
            Family::default(),
        );
        let worker_batches = registered(
            r,
            "memberline_worker_batches",
            "Shared transactions of several deliveries, by consumer and outcome (committed; \
             split: rolled back, each delivery then handled on its own).",
            Family::default(),
        );
        let lane_batches = registered(
            r,
            "memberline_lane_batches",
            "Transactions shared by several purchases or notifications, by lane (purchases, \
             notifications) and outcome (committed; split: failed, each then run on its own).",
            Family::default(),
        );
        let lane_waiting = registered(
            r,
            "memberline_lane_waiting",
            "Purchases or notifications received and waiting for a lane, by lane.",
            Family::default(),
        );
        let worker_handling = registered(
            r,
            "memberline_worker_handling_seconds",
            "Time to handle one delivery, by consumer.",
            latency(),
        );
        let worker_event_to_effect = registered(
            r,
            "memberline_worker_event_to_effect_seconds",
            "Time from an event's occurrence to its committed effect, by consumer.",
            latency(),
        );
        let channel_deliveries = registered(
            r,
            "memberline_channel_deliveries",
            "Channel message send attempts by outcome (delivered; retried: failed, tried again \
             later; failed: given up after the last attempt, waiting for an operator).",
            Family::default(),
        );
        Self {
            registry: std::mem::take(r),
            http_requests,
            http_duration,
            orders,
            outbox_published,
            order_streams,
            order_watch_reads,
            outbox_publish_failures,
            outbox_unpublished,
            outbox_oldest_age,
            outbox_quarantined,
            worker_deliveries,
            worker_batches,
            lane_batches,
            lane_waiting,
            worker_handling,
            worker_event_to_effect,
            channel_deliveries,
            payment_notifications,
            payment_lifecycle,
        }
    }
}

/// HTTP methods recorded by name; anything else is `other`.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// One answered HTTP request. `route` must be a matched route template (or `other`).
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.http_requests
            .get_or_create(&HttpLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Buyers' order streams open on this instance now.
    pub fn set_order_streams(&self, open: usize) {
        self.order_streams.set(open as i64);
    }

    /// One read by the instance's order watcher.
    pub fn order_watch_read(&self) {
        self.order_watch_reads.inc();
    }

    /// One provider notification and what became of it.
    pub fn payment_notification(&self, provider: Provider, outcome: NotificationOutcome) {
        self.payment_notifications
            .get_or_create(&NotificationLabels {
                provider: provider.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// One step of the payment lifecycle.
    pub fn payment_lifecycle(
        &self,
        provider: Provider,
        action: LifecycleAction,
        outcome: LifecycleOutcome,
    ) {
        self.payment_lifecycle
            .get_or_create(&LifecycleLabels {
                provider: provider.as_str(),
                action: action.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// One order placement attempt and its outcome.
    pub fn order(&self, pay_method: PayMethod, outcome: OrderOutcome) {
        self.orders
            .get_or_create(&OrderLabels {
                pay_method: pay_method.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Outbox rows confirmed by the broker and rows that failed, in one relay batch.
    pub fn outbox_batch(&self, published: u64, failed: u64) {
        self.outbox_published.inc_by(published);
        self.outbox_publish_failures.inc_by(failed);
    }

    /// Outbox lag as read from the database at scrape time (`-1` when it could not be read).
    pub fn set_outbox_lag(&self, lag: crate::outbox::Lag) {
        self.outbox_unpublished.set(lag.waiting);
        self.outbox_oldest_age.set(lag.oldest_age_seconds);
        self.outbox_quarantined.set(lag.quarantined);
    }

    /// One settled delivery of `consumer`.
    pub fn delivery(
        &self,
        consumer: &'static str,
        outcome: DeliveryOutcome,
        handling_seconds: f64,
    ) {
        self.worker_deliveries
            .get_or_create(&DeliveryLabels {
                consumer,
                outcome: outcome.as_str(),
            })
            .inc();
        self.worker_handling
            .get_or_create(&ConsumerLabels { consumer })
            .observe(handling_seconds);
    }

    /// Time from an event's occurrence to its committed effect.
    pub fn event_to_effect(&self, consumer: &'static str, seconds: f64) {
        self.worker_event_to_effect
            .get_or_create(&ConsumerLabels { consumer })
            .observe(seconds);
    }

    /// One shared transaction of `consumer`.
    pub fn batch(&self, consumer: &'static str, outcome: BatchOutcome) {
        self.worker_batches
            .get_or_create(&DeliveryLabels {
                consumer,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A transaction of `lane` shared by several jobs ended in `outcome`.
    pub fn lane_batch(&self, lane: &'static str, outcome: BatchOutcome) {
        self.lane_batches
            .get_or_create(&LaneLabels {
                lane,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Jobs that started (`1`) or stopped (`-1`) waiting for one of `lane`'s lanes.
    pub fn lane_waiting(&self, lane: &'static str, change: i64) {
        self.lane_waiting
            .get_or_create(&LaneNameLabels { lane })
            .inc_by(change);
    }

    /// How many shared transactions of `consumer` ended in `outcome` (tests and logs).
    pub fn batches(&self, consumer: &'static str, outcome: BatchOutcome) -> u64 {
        self.worker_batches
            .get(&DeliveryLabels {
                consumer,
                outcome: outcome.as_str(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// How many deliveries of `consumer` ended in `outcome` (tests and logs).
    pub fn deliveries(&self, consumer: &'static str, outcome: DeliveryOutcome) -> u64 {
        self.worker_deliveries
            .get(&DeliveryLabels {
                consumer,
                outcome: outcome.as_str(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// One channel message send attempt.
    pub fn channel_delivery(&self, outcome: ChannelOutcome) {
        self.channel_deliveries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// How many channel message send attempts ended in `outcome` (tests and logs).
    pub fn channel_deliveries(&self, outcome: ChannelOutcome) -> u64 {
        self.channel_deliveries
            .get(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// How many outbox rows this process published with a positive confirm.
    pub fn outbox_published(&self) -> u64 {
        self.outbox_published.get()
    }

    /// Everything, in the OpenMetrics text format (which Prometheus scrapes natively).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_labels_help_and_the_total_suffix() {
        let m = Metrics::default();
        m.order(PayMethod::Points, OrderOutcome::Paid);
        m.order(PayMethod::Points, OrderOutcome::Paid);
        m.set_outbox_lag(crate::outbox::Lag {
            waiting: 3.0,
            oldest_age_seconds: 1.5,
            quarantined: 0.0,
        });
        let text = m.render();
        assert!(text.contains("# TYPE memberline_orders counter"), "{text}");
        assert!(
            text.contains("memberline_orders_total{pay_method=\"points\",outcome=\"paid\"} 2"),
            "{text}"
        );
        assert!(text.contains("memberline_outbox_unpublished 3"), "{text}");
    }

    #[test]
    fn a_histogram_counts_into_every_bucket_above_the_value() {
        let m = Metrics::default();
        m.http_request("GET", "/x", 200, 0.02);
        let text = m.render();
        assert!(text.contains("le=\"0.01\",route=\"/x\"} 0"), "{text}");
        assert!(text.contains("le=\"0.025\",route=\"/x\"} 1"), "{text}");
        assert!(text.contains("le=\"+Inf\",route=\"/x\"} 1"), "{text}");
    }

    #[test]
    fn invented_http_methods_share_one_label() {
        let m = Metrics::default();
        m.http_request("FOO", "other", 405, 0.001);
        m.http_request("BAR", "other", 405, 0.001);
        let text = m.render();
        assert!(
            text.contains(
                "memberline_http_requests_total{method=\"other\",route=\"other\",status=\"405\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("FOO"));
    }
}
