//! Two merchant consoles, one on each gateway, that follow the feed for the whole run as the
//! console page does: a dropped socket (its gateway killed, the database failing over) is opened
//! again with `?after=` the last number received. Each counts the paid orders it heard, so that
//! the end can tell a lost push from a doubled one.

use crate::fleet::GATEWAYS;
use futures::StreamExt;
use memberline_gateway::http::auth::{Keys, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Heard {
    /// Paid orders and how many times each was received.
    paid: BTreeMap<i64, u32>,
}

pub struct Consoles {
    heard: Vec<(&'static str, Arc<Mutex<Heard>>)>,
    stop: CancellationToken,
}

pub struct Tally {
    pub name: &'static str,
    pub missing: usize,
    pub duplicates: usize,
}

impl Consoles {
    pub async fn open() -> Self {
        let token = Keys::new("memberline-local-development-secret-change-me").issue(
            0,
            Role::Merchant,
            7200,
        );
        let stop = CancellationToken::new();
        let mut heard = Vec::new();
        for (name, port) in GATEWAYS {
            let mine = Arc::new(Mutex::new(Heard::default()));
            heard.push((name, mine.clone()));
            tokio::spawn(follow(port, token.clone(), mine, stop.clone()));
        }
        Self { heard, stop }
    }

    /// Waits up to `limit` until every console heard every order of `paid`; each console's
    /// missing and doubled orders then.
    pub async fn wait_for(&self, paid: &BTreeSet<i64>, limit: Duration) -> Vec<Tally> {
        let deadline = Instant::now() + limit;
        loop {
            let tallies: Vec<Tally> = self
                .heard
                .iter()
                .map(|(name, heard)| {
                    let heard = heard.lock().unwrap();
                    Tally {
                        name,
                        missing: paid
                            .iter()
                            .filter(|id| !heard.paid.contains_key(id))
                            .count(),
                        duplicates: heard.paid.values().filter(|n| **n > 1).count(),
                    }
                })
                .collect();
            if tallies.iter().all(|t| t.missing == 0) || Instant::now() > deadline {
                return tallies;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn close(&self) {
        self.stop.cancel();
    }
}

/// One console on the gateway at `port`, from the feed's start, until `stop`.
async fn follow(port: u16, token: String, heard: Arc<Mutex<Heard>>, stop: CancellationToken) {
    let mut after = 0i64;
    while !stop.is_cancelled() {
        let url = format!("ws://127.0.0.1:{port}/v1/merchant/stream?after={after}");
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                frame = socket.next() => frame,
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                _ => break,
            };
            let Ok(m) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if m["type"] == "hello" || m["type"] == "heartbeat" {
                continue;
            }
            if let Some(seq) = m["seq"].as_i64() {
                after = after.max(seq);
            }
            if m["type"] == "order.paid"
                && let Some(id) = m["order_id"].as_i64()
            {
                *heard.lock().unwrap().paid.entry(id).or_default() += 1;
            }
        }
    }
}
