//! The back office on the grown database (1,000,000 orders paid over the last 90 days): the
//! dashboard's latency over those 90 days, the orders CSV export's rate and the gateway's memory
//! while it streams, and member search by phone or OpenID among 200,000 members.

use crate::load::percentile;
use crate::system::{System, rss_mib};
use memberline_gateway::http::auth::Role;
use sea_orm::ConnectionTrait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Members written to search among.
pub const MEMBERS: i64 = 200_000;
const STATS_REQUESTS: usize = 300;
const SEARCHES: usize = 1000;

pub struct Outcome {
    /// Seconds `memberline stats rebuild` took over the grown database.
    pub rebuild_secs: f64,
    /// Milliseconds per dashboard request (90 days).
    pub stats_ms: Vec<f64>,
    /// Milliseconds per search, by phone and by OpenID alternately.
    pub search_ms: Vec<f64>,
    pub csv_rows: u64,
    pub csv_secs: f64,
    /// The gateway's RSS before the export and its highest during it, in MiB.
    pub rss_before: f64,
    pub rss_peak: f64,
}

impl Outcome {
    pub fn stats_p(&self, p: f64) -> f64 {
        sorted_p(&self.stats_ms, p)
    }

    pub fn search_p(&self, p: f64) -> f64 {
        sorted_p(&self.search_ms, p)
    }

    pub fn csv_rate(&self) -> f64 {
        self.csv_rows as f64 / self.csv_secs
    }

    pub fn rss_growth_mb(&self) -> f64 {
        (self.rss_peak - self.rss_before) * 1.048_576
    }
}

fn sorted_p(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, p)
}

async fn get(system: &System, token: &str, path: &str) -> f64 {
    let started = Instant::now();
    let res = system
        .http
        .get(format!("{}{path}", system.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert!(res.status().is_success(), "{path}: {}", res.status());
    res.bytes().await.expect("body");
    started.elapsed().as_secs_f64() * 1000.0
}

pub async fn run(system: &System) -> Outcome {
    let conn = &system.db.conn;
    conn.execute_unprepared(&format!(
        "INSERT INTO users (name, phone) \
         SELECT 'member ' || g, '139' || lpad(g::text, 8, '0') FROM generate_series(1, {MEMBERS}) g; \
         INSERT INTO wechat_identities (appid, openid, buyer_id) \
         SELECT 'wxbench', 'o' || md5(id::text), id FROM users WHERE name LIKE 'member %'"
    ))
    .await
    .expect("members");
    conn.execute_unprepared("VACUUM ANALYZE users, wechat_identities")
        .await
        .expect("vacuum");
    let started = Instant::now();
    memberline_orders::stats::rebuild(conn, chrono_tz::Asia::Shanghai)
        .await
        .expect("rollups rebuilt");
    let rebuild_secs = started.elapsed().as_secs_f64();
    let admin = system.keys.issue(1, Role::Admin, 3600);

    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .date_naive();
    let from = today - chrono::Days::new(89);
    let stats_path = format!("/v1/admin/stats?from={from}&to={today}");
    get(system, &admin, &stats_path).await;
    let mut stats_ms = Vec::with_capacity(STATS_REQUESTS);
    for _ in 0..STATS_REQUESTS {
        stats_ms.push(get(system, &admin, &stats_path).await);
    }

    // Members picked at random: a phone, then an OpenID, and so on.
    let picked = conn
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT u.phone, w.openid FROM users u JOIN wechat_identities w ON w.buyer_id = u.id \
                 WHERE w.appid = 'wxbench' ORDER BY random() LIMIT {}",
                SEARCHES / 2
            ),
        ))
        .await
        .expect("members to find");
    let mut search_ms = Vec::with_capacity(SEARCHES);
    for row in &picked {
        for column in ["phone", "openid"] {
            let q: String = row.try_get("", column).expect("a phone and an OpenID");
            search_ms.push(get(system, &admin, &format!("/v1/admin/members?q={q}")).await);
        }
    }

    let pid = system.gateway_pid();
    let rss_before = rss_mib(pid);
    let streaming = Arc::new(AtomicBool::new(true));
    let sampler = {
        let streaming = streaming.clone();
        tokio::spawn(async move {
            let mut peak = rss_mib(pid);
            while streaming.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let mut res = system
        .http
        .get(format!("{}/v1/admin/orders.csv", system.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("export");
    assert!(res.status().is_success());
    let mut lines = 0_u64;
    while let Some(chunk) = res.chunk().await.expect("export body") {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let csv_secs = started.elapsed().as_secs_f64();
    streaming.store(false, Ordering::Relaxed);
    let rss_peak = sampler.await.expect("sampler");
    Outcome {
        rebuild_secs,
        stats_ms,
        search_ms,
        csv_rows: lines.saturating_sub(1),
        csv_secs,
        rss_before,
        rss_peak,
    }
}
