//! The load generator: purchases over HTTP with a JWT and an Idempotency-Key each, half with
//! balance and half with points, spread over many buyers; closed loop (a fixed number of
//! requests in flight) or open loop (a fixed arrival rate, latency measured from each request's
//! scheduled time, so a slow server cannot slow the arrivals down and hide its own latency).

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Shop {
    pub http: reqwest::Client,
    pub base: String,
    /// Buyer tokens.
    pub tokens: Vec<String>,
    pub plan_id: i64,
    /// Distinguishes this run's idempotency keys.
    pub run: String,
}

/// One purchase.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it completed, from the start of its run.
    pub done_at: Duration,
    /// Milliseconds from its (scheduled) start to its answer.
    pub latency_ms: f64,
    /// Unix milliseconds when it was (scheduled to be) sent.
    pub sent_unix_ms: f64,
    /// The order, when it was answered 201.
    pub order_id: Option<i64>,
    /// Answered 503 `overloaded` with `Retry-After`: refused cleanly, nothing written.
    pub refused: bool,
}

/// A scenario's samples and length.
pub struct Run {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }
    pub fn ok(&self) -> usize {
        self.samples.iter().filter(|s| s.order_id.is_some()).count()
    }
    /// Neither accepted nor cleanly refused.
    pub fn errors(&self) -> usize {
        self.samples.len() - self.ok() - self.refused()
    }
    pub fn refused(&self) -> usize {
        self.samples.iter().filter(|s| s.refused).count()
    }
    /// The accepted purchases' latencies, sorted.
    pub fn accepted_latencies(&self) -> Vec<f64> {
        let mut l: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.order_id.is_some())
            .map(|s| s.latency_ms)
            .collect();
        l.sort_by(|a, b| a.total_cmp(b));
        l
    }
    /// Sorted latencies in milliseconds.
    pub fn latencies(&self) -> Vec<f64> {
        let mut l: Vec<f64> = self.samples.iter().map(|s| s.latency_ms).collect();
        l.sort_by(|a, b| a.total_cmp(b));
        l
    }
    /// Completions per second, second by second (whole seconds only: a last partial second
    /// would read as a drop).
    pub fn per_second(&self) -> Vec<f64> {
        let secs = (self.elapsed.as_secs_f64().floor() as usize).max(1);
        let mut buckets = vec![0.0; secs];
        for s in &self.samples {
            if let Some(b) = buckets.get_mut(s.done_at.as_secs_f64() as usize) {
                *b += 1.0;
            }
        }
        buckets
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn unix_ms(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

fn bar(label: &str, secs: f64) -> ProgressBar {
    let bar = ProgressBar::new((secs * 10.0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>34} [{bar:30}] {elapsed:>3} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

impl Shop {
    /// Purchase number `i`: balance on even numbers, points on odd ones.
    /// Purchase `i`: its order id when accepted, and whether it was refused cleanly.
    async fn purchase(&self, i: u64) -> (Option<i64>, bool) {
        let token = &self.tokens[(i as usize * 7919) % self.tokens.len()];
        let method = if i.is_multiple_of(2) {
            "balance"
        } else {
            "points"
        };
        let Ok(res) = self
            .http
            .post(format!("{}/v1/orders", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("{}-{i}", self.run))
            .json(&serde_json::json!({"plan_id": self.plan_id, "pay_method": method}))
            .send()
            .await
        else {
            return (None, false);
        };
        let status = res.status();
        let retry_after = res.headers().contains_key("retry-after");
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        if status == 503 && retry_after && body["error"]["code"] == "overloaded" {
            return (None, true);
        }
        if status != 201 {
            eprintln!("purchase {i}: {status}");
            return (None, false);
        }
        (body["id"].as_i64(), false)
    }

    /// `concurrency` purchases in flight for `secs` seconds.
    pub async fn closed_loop(self: &Arc<Self>, label: &str, concurrency: usize, secs: f64) -> Run {
        let bar = bar(label, secs);
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..concurrency).map(|_| {
            let (shop, next) = (self.clone(), next.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (sent, wall) = (Instant::now(), SystemTime::now());
                    let (order_id, refused) = shop.purchase(i).await;
                    samples.push(Sample {
                        done_at: started.elapsed(),
                        latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
                        sent_unix_ms: unix_ms(wall),
                        order_id,
                        refused,
                    });
                }
                samples
            })
        });
        let ticker = tick(bar.clone(), started, secs);
        let samples: Vec<Sample> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .flat_map(|r| r.expect("load task"))
            .collect();
        ticker.abort();
        let elapsed = started.elapsed();
        bar.finish_with_message(format!(
            "{:.0}/s",
            samples.len() as f64 / elapsed.as_secs_f64()
        ));
        Run { samples, elapsed }
    }

    /// `rate` purchases a second, each sent at its scheduled time, for `secs` seconds.
    pub async fn open_loop(self: &Arc<Self>, label: &str, rate: f64, secs: f64) -> Run {
        let bar = bar(label, secs);
        let started = Instant::now();
        let wall_started = SystemTime::now();
        let total = (rate * secs).round() as u64;
        let ticker = tick(bar.clone(), started, secs);
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let scheduled = Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until((started + scheduled).into()).await;
            let shop = self.clone();
            tasks.push(tokio::spawn(async move {
                let (order_id, refused) = shop.purchase(i).await;
                let done_at = started.elapsed();
                Sample {
                    done_at,
                    latency_ms: (done_at - scheduled).as_secs_f64() * 1000.0,
                    sent_unix_ms: unix_ms(wall_started + scheduled),
                    order_id,
                    refused,
                }
            }));
        }
        let samples: Vec<Sample> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("load task"))
            .collect();
        ticker.abort();
        let elapsed = Duration::from_secs_f64(secs).max(started.elapsed());
        bar.finish_with_message(format!(
            "{:.0}/s",
            samples.len() as f64 / elapsed.as_secs_f64()
        ));
        Run { samples, elapsed }
    }
}

fn tick(bar: ProgressBar, started: Instant, secs: f64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            bar.set_position(
                ((started.elapsed().as_secs_f64() / secs).min(1.0) * secs * 10.0) as u64,
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
