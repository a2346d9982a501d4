//! `memberline console tail`: follows the merchant stream in a terminal, one line per feed entry
//! (`#<seq> <type> <order_no> <content>`, or the JSON with `--json`), reconnecting after any drop
//! (capped, jittered backoff) and resuming after the last entry it printed, so nothing is missed
//! or printed twice.

use backon::BackoffBuilder;
use futures::StreamExt;
use std::io::Write;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// Where to follow and how to print.
pub struct Tail {
    /// The gateway, `http://host:port`.
    pub base: String,
    /// A merchant or admin bearer token.
    pub token: String,
    /// Start after this feed number; live from now when absent.
    pub after: Option<i64>,
    pub json: bool,
}

/// One line for `message`.
pub fn line(message: &serde_json::Value, json: bool) -> String {
    if json {
        return message.to_string();
    }
    format!(
        "#{} {} {} {}",
        message["seq"],
        message["type"].as_str().unwrap_or_default(),
        message["order_no"].as_str().unwrap_or_default(),
        message["content"].as_str().unwrap_or_default(),
    )
}

/// Follows the stream until `shutdown`; fails only when the gateway refuses the token.
pub async fn run(tail: Tail, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ws_base = tail.base.trim_end_matches('/').replacen("http", "ws", 1);
    let mut last = tail.after;
    let mut delays = backoff();
    let mut out = std::io::stdout();
    while !shutdown.is_cancelled() {
        let query = last.map(|seq| format!("?after={seq}")).unwrap_or_default();
        let mut request = format!("{ws_base}/v1/merchant/stream{query}").into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", tail.token).parse()?);
        let connected = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = tokio_tungstenite::connect_async(request) => c,
        };
        let mut socket = match connected {
            Ok((socket, _)) => {
                eprintln!(
                    "connected (已连接){}",
                    last.map(|s| format!(", after #{s}")).unwrap_or_default()
                );
                delays = backoff();
                socket
            }
            Err(WsError::Http(response)) if response.status().is_client_error() => {
                anyhow::bail!(
                    "the gateway refused the stream ({}): check the token and --after",
                    response.status()
                );
            }
            Err(e) => {
                let pause = delays.next().unwrap_or(Duration::from_secs(10));
                eprintln!("reconnecting (重连中) in {} ms: {e}", pause.as_millis());
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ok(());
                }
                frame = socket.next() => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let Ok(message) = serde_json::from_str::<serde_json::Value>(&text) else {
                        continue;
                    };
                    if message["type"] == "heartbeat" {
                        continue;
                    }
                    if message["type"] == "hello" {
                        // Where the stream started: resume from here even if nothing comes.
                        if last.is_none() {
                            last = message["seq"].as_i64();
                        }
                        continue;
                    }
                    writeln!(out, "{}", line(&message, tail.json))?;
                    out.flush()?;
                    if let Some(seq) = message["seq"].as_i64() {
                        last = Some(seq);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    // Not at once: a gateway that keeps closing must not be hammered.
                    let pause = delays.next().unwrap_or(Duration::from_secs(10));
                    eprintln!(
                        "closed by the gateway: {frame:?}; resuming in {} ms",
                        pause.as_millis()
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    eprintln!("connection lost: {e}; resuming");
                    break;
                }
                None => break,
            }
        }
    }
    Ok(())
}

fn backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}
