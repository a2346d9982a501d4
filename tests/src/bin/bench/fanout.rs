//! Fan-out: thousands of merchant consoles on one gateway, every worker running. Purchases are
//! made at a steady pace; each console must receive every one of them, and each receipt is
//! timed from the moment the notifier committed its feed entry (the `at` of the push, taken
//! just before the commit, so the time is if anything overstated).

use crate::load::percentile;
use crate::system::{System, rss_mib};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// Purchases announced during the scenario, and their pace.
pub const PURCHASES: usize = 10;
pub const PER_SECOND: f64 = 2.0;

pub struct Outcome {
    pub sockets: usize,
    /// Sockets that could not be opened.
    pub refused: usize,
    /// Receipts expected (sockets × purchases), and distinct ones received (each console's
    /// feed numbers counted once).
    pub expected: usize,
    pub received: usize,
    /// Receipts of a feed number the console had already received: a duplicate must not hide
    /// a lost push.
    pub duplicates: usize,
    /// Milliseconds from the feed entry's commit to its receipt, sorted.
    pub latencies: Vec<f64>,
    /// The gateway's resident memory with every socket open, before and during the pushes
    /// (the larger), and before any was opened, in MiB.
    pub rss_open: f64,
    pub rss_idle: f64,
}

impl Outcome {
    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.latencies, q)
    }
}

/// Open files this process may hold (`ulimit -n`; the gateway it starts inherits it).
pub fn descriptors() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

fn now_ms() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1000.0
}

/// One console: waits for its `hello`, says so, then times every paid order it hears about
/// until it has `PURCHASES` distinct ones or `stop` fires, and reports its times and its
/// duplicates on `done`. It keeps its
/// socket open until `stop`: consoles closing while the gateway still pushes to the others
/// would be measured as the push's latency (they made the last push's p99 twice the others').
async fn console(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    opened: tokio::sync::mpsc::Sender<bool>,
    done: tokio::sync::mpsc::UnboundedSender<(Vec<f64>, usize)>,
    stop: CancellationToken,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let Ok((mut socket, _)) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false).await
    else {
        let _ = opened.send(false).await;
        let _ = done.send((Vec::new(), 0));
        return;
    };
    let mut times = Vec::with_capacity(PURCHASES);
    let mut seen = std::collections::HashSet::with_capacity(PURCHASES);
    let mut duplicates = 0;
    let mut said = false;
    while times.len() < PURCHASES {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            frame = socket.next() => frame,
        };
        let Some(Ok(Message::Text(text))) = frame else {
            if matches!(frame, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                break;
            }
            continue;
        };
        let received = now_ms();
        // Read without parsing the whole message: 10,000 consoles share this machine's cores
        // with the gateway, and a slow reader would count against it.
        if !said && text.contains(r#""type":"hello""#) {
            said = true;
            let _ = opened.send(true).await;
        } else if text.contains(r#""type":"order.paid""#) {
            let seq = text
                .split_once(r#""seq":"#)
                .map(|(_, rest)| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap_or("")
                })
                .unwrap_or("")
                .to_owned();
            if !seen.insert(seq) {
                duplicates += 1;
                continue;
            }
            let at = text
                .split_once(r#""at":""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .and_then(|(at, _)| chrono::DateTime::parse_from_rfc3339(at).ok());
            if let Some(at) = at {
                times.push(received - at.timestamp_micros() as f64 / 1000.0);
            }
        }
    }
    if !said {
        let _ = opened.send(false).await;
    }
    let _ = done.send((times, duplicates));
    stop.cancelled().await;
    let _ = socket.close(None).await;
}

pub async fn run(sockets: usize) -> Outcome {
    let system = System::start(true).await;
    let rss_idle = rss_mib(system.gateway_pid());
    let token = system.keys.issue(
        9_000_001,
        memberline_gateway::http::auth::Role::Merchant,
        7200,
    );
    let url = format!(
        "{}/v1/merchant/stream",
        system.base.replacen("http", "ws", 1)
    );
    let bar = ProgressBar::new(sockets as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>34} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix("merchant consoles");
    let stop = CancellationToken::new();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel(1024);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    // At most 200 handshakes at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let mut request = url.as_str().into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (opened, stop, gate) = (opened_tx.clone(), stop.clone(), gate.clone());
        let done = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let (tx, mut rx) = tokio::sync::mpsc::channel(1);
            let console = tokio::spawn(console(request, tx, done, stop));
            let ok = rx.recv().await.unwrap_or(false);
            drop(permit);
            let _ = opened.send(ok).await;
            let _ = console.await;
        }));
    }
    drop((opened_tx, done_tx));
    let mut refused = 0;
    for _ in 0..sockets {
        match opened_rx.recv().await {
            Some(true) => bar.inc(1),
            Some(false) => refused += 1,
            None => break,
        }
    }
    bar.finish_with_message(format!("{refused} refused"));
    let mut rss_open = rss_mib(system.gateway_pid());
    let shop = system.shop("fanout");
    let pushes = shop.open_loop(
        "purchases announced to every console",
        PER_SECOND,
        PURCHASES as f64 / PER_SECOND,
    );
    let sampler = async {
        let mut peak: f64 = 0.0;
        for _ in 0..((PURCHASES as f64 / PER_SECOND) * 10.0) as usize {
            peak = peak.max(rss_mib(system.gateway_pid()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    };
    let (_, peak) = tokio::join!(pushes, sampler);
    rss_open = rss_open.max(peak);
    // Every console has heard of every purchase, or a minute went by; then they all close.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut latencies = Vec::with_capacity(sockets * PURCHASES);
    let mut duplicates = 0;
    // One report per console, refused ones included (empty).
    let reports = async {
        for _ in 0..sockets {
            match done_rx.recv().await {
                Some((times, doubled)) => {
                    latencies.extend(times);
                    duplicates += doubled;
                }
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), reports).await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    // Consoles still short of every push at the deadline reported when told to stop.
    while let Ok((times, doubled)) = done_rx.try_recv() {
        latencies.extend(times);
        duplicates += doubled;
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    system.stop().await;
    Outcome {
        sockets,
        refused,
        expected: (sockets - refused) * PURCHASES,
        received: latencies.len(),
        duplicates,
        latencies,
        rss_open,
        rss_idle,
    }
}
