//! Buyers purchasing without pause while faults come and go: each shopper buys with balance,
//! points, WeChat Pay and Alipay in turn (paying the providers' orders at the emulator, which
//! notifies through the balanced address), alternating between the gateways, as a well-behaved
//! client does: a 503 or a dropped connection is retried with the same `Idempotency-Key` for up
//! to a minute. Every phase has buyers of its own, so what a fault did shows on its buyers.

use crate::fleet::{EMULATOR, GATEWAYS};
use memberline_gateway::http::auth::{Keys, Role};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Shoppers buying at once.
const SHOPPERS: usize = 6;
/// A shopper's pause between purchases.
const PAUSE: Duration = Duration::from_millis(300);
const METHODS: [&str; 4] = ["balance", "points", "wechat", "alipay"];
/// The development signing secret of deploy/config/local.toml (the fleet runs with it).
const JWT_SECRET: &str = "memberline-local-development-secret-change-me";

struct Answer {
    phase: usize,
    status: u16,
    order_id: Option<i64>,
}

pub struct Shoppers {
    http: reqwest::Client,
    keys: Keys,
    plan_id: i64,
    /// Per phase, its shoppers' buyer ids.
    buyers: Vec<Vec<i64>>,
    probe_buyer: i64,
    phase: AtomicUsize,
    stopped: AtomicBool,
    answers: Mutex<Vec<Answer>>,
    /// Every answer a purchase attempt got (0: none, the connection failed), by phase.
    attempts: Mutex<BTreeMap<(usize, u16), u64>>,
    /// Requests waiting for an answer, per gateway.
    in_flight: [AtomicI64; 2],
    sequence: AtomicU64,
}

fn base(gateway: usize) -> String {
    format!("http://127.0.0.1:{}", GATEWAYS[gateway % 2].1)
}

impl Shoppers {
    pub async fn new(phases: usize) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let keys = Keys::new(JWT_SECRET);
        let admin = keys.issue(0, Role::Admin, 7200);
        let create = async |name: String| -> i64 {
            let res: Value = http
                .post(format!("{}/v1/admin/users", base(0)))
                .bearer_auth(&admin)
                .json(&json!({"name": name, "balance_fen": 1_000_000_000i64, "points": 1_000_000_000i64}))
                .send()
                .await
                .expect("creating a buyer")
                .json()
                .await
                .expect("a buyer");
            res["id"].as_i64().expect("a buyer id")
        };
        let mut buyers = Vec::new();
        for phase in 0..phases {
            let mut of_phase = Vec::new();
            for i in 0..SHOPPERS {
                of_phase.push(create(format!("chaos {phase}.{i}")).await);
            }
            buyers.push(of_phase);
        }
        let probe_buyer = create("chaos probe".into()).await;
        let plans: Value = http
            .get(format!("{}/v1/plans", base(0)))
            .bearer_auth(keys.issue(probe_buyer, Role::User, 7200))
            .send()
            .await
            .expect("plans")
            .json()
            .await
            .expect("plans");
        let plan_id = plans["plans"]
            .as_array()
            .or(plans.as_array())
            .and_then(|p| p.iter().find(|p| p["code"] == "monthly"))
            .and_then(|p| p["id"].as_i64())
            .expect("the monthly plan");
        Self {
            http,
            keys,
            plan_id,
            buyers,
            probe_buyer,
            phase: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            answers: Mutex::default(),
            attempts: Mutex::default(),
            in_flight: [AtomicI64::new(0), AtomicI64::new(0)],
            sequence: AtomicU64::new(0),
        }
    }

    pub fn enter(&self, phase: usize) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub async fn run(self: std::sync::Arc<Self>) {
        let tasks: Vec<_> = (0..SHOPPERS)
            .map(|k| {
                let me = self.clone();
                tokio::spawn(async move {
                    let mut turn = 0usize;
                    while !me.stopped.load(Ordering::SeqCst) {
                        let phase = me.phase.load(Ordering::SeqCst);
                        let buyer = me.buyers[phase][k];
                        let method = METHODS[(turn + k) % METHODS.len()];
                        let (status, order) = me.purchase(buyer, method, turn + k).await;
                        if status == 201
                            && let Some(order) = &order
                            && (method == "wechat" || method == "alipay")
                        {
                            me.pay(method, order["order_no"].as_str().unwrap_or_default())
                                .await;
                        }
                        let order_id = order.as_ref().and_then(|o| o["id"].as_i64());
                        me.answers.lock().unwrap().push(Answer {
                            phase,
                            status,
                            order_id: (status == 201).then_some(order_id).flatten(),
                        });
                        turn += 1;
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// One purchase, retried with its key on 503 and on a lost connection for up to a minute:
    /// the last status (0: never answered) and the order when created.
    async fn purchase(&self, buyer: i64, method: &str, gateway: usize) -> (u16, Option<Value>) {
        let key = format!("chaos-{}", self.sequence.fetch_add(1, Ordering::SeqCst));
        let token = self.keys.issue(buyer, Role::User, 7200);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempt = 0;
        loop {
            let g = (gateway + attempt) % 2;
            self.in_flight[g].fetch_add(1, Ordering::SeqCst);
            let sent = self
                .http
                .post(format!("{}/v1/orders", base(g)))
                .bearer_auth(&token)
                .header("Idempotency-Key", &key)
                .json(&json!({"plan_id": self.plan_id, "pay_method": method}))
                .send()
                .await;
            self.in_flight[g].fetch_sub(1, Ordering::SeqCst);
            let status = sent.as_ref().map_or(0, |r| r.status().as_u16());
            let phase = self.phase.load(Ordering::SeqCst);
            *self
                .attempts
                .lock()
                .unwrap()
                .entry((phase, status))
                .or_default() += 1;
            if let Ok(res) = sent
                && status != 503
            {
                let body: Value = res.json().await.unwrap_or_default();
                return (status, (status == 201).then_some(body));
            }
            attempt += 1;
            if Instant::now() > deadline {
                return (status, None);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Pays a provider's order at the emulator (as the buyer's scan would), retried briefly.
    async fn pay(&self, provider: &str, order_no: &str) {
        for _ in 0..20 {
            let paid = self
                .http
                .post(format!("{EMULATOR}/emulator/pay"))
                .json(&json!({"provider": provider, "out_trade_no": order_no}))
                .send()
                .await;
            if paid.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A balance purchase by the probe buyer; its order id once created.
    pub async fn probe(&self) -> Option<i64> {
        let n = self.sequence.load(Ordering::SeqCst) as usize;
        let (status, order) = self.purchase(self.probe_buyer, "balance", n).await;
        (status == 201).then(|| order?["id"].as_i64()).flatten()
    }

    /// A stream ticket for the probe buyer, left unused (a browser that never opened its
    /// stream).
    pub async fn ticket(&self) {
        let _ = self
            .http
            .post(format!("{}/v1/me/stream-ticket", base(0)))
            .bearer_auth(self.keys.issue(self.probe_buyer, Role::User, 7200))
            .send()
            .await;
    }

    /// Waits up to five seconds for a request in flight to gateway `gateway`; how many were.
    pub async fn wait_in_flight(&self, gateway: usize) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.in_flight[gateway].load(Ordering::SeqCst);
            if n > 0 || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Phase `phase`'s created orders, every answer its attempts got, and its purchases that
    /// never got a 201 (the client gave up after a minute of retries).
    pub fn tally(&self, phase: usize) -> (Vec<i64>, BTreeMap<u16, u64>, usize) {
        let answers = self.answers.lock().unwrap();
        let mut orders = Vec::new();
        let mut gave_up = 0;
        for a in answers.iter().filter(|a| a.phase == phase) {
            orders.extend(a.order_id);
            gave_up += usize::from(a.status != 201);
        }
        let counts = self
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, _), _)| *p == phase)
            .map(|((_, status), n)| (*status, *n))
            .collect();
        (orders, counts, gave_up)
    }

    pub fn buyers_of(&self, phase: usize) -> Vec<i64> {
        self.buyers[phase].clone()
    }

    /// Every order a buyer was told was created (201).
    pub fn acknowledged(&self) -> Vec<i64> {
        let answers = self.answers.lock().unwrap();
        answers.iter().filter_map(|a| a.order_id).collect()
    }

    async fn emulator(&self, path: &str, body: Value) -> Value {
        let res = self
            .http
            .post(format!("{EMULATOR}{path}"))
            .json(&body)
            .send()
            .await
            .expect("the emulator");
        res.json().await.unwrap_or_default()
    }

    /// A WeChat order paid while the emulator sends each notification `copies` times; how many
    /// deliveries of it the emulator made.
    pub async fn one_notification_many_times(&self, copies: u32) -> usize {
        let buyer = self.buyers[self.phase.load(Ordering::SeqCst)][0];
        let (status, order) = self.purchase(buyer, "wechat", 0).await;
        let Some(order) = order.filter(|_| status == 201) else {
            return 0;
        };
        let no = order["order_no"].as_str().unwrap_or_default().to_owned();
        self.emulator(
            "/emulator/notify-mode",
            json!({"provider": "wechat", "mode": "deliver", "copies": copies}),
        )
        .await;
        self.pay("wechat", &no).await;
        self.emulator(
            "/emulator/notify-mode",
            json!({"provider": "wechat", "mode": "deliver", "copies": 1}),
        )
        .await;
        self.record(order, status);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let attempts: Value = self
            .http
            .get(format!(
                "{EMULATOR}/emulator/notifications?out_trade_no={no}"
            ))
            .send()
            .await
            .expect("the emulator")
            .json()
            .await
            .unwrap_or_default();
        attempts.as_array().map_or(0, Vec::len)
    }

    fn record(&self, order: Value, status: u16) {
        self.answers.lock().unwrap().push(Answer {
            phase: self.phase.load(Ordering::SeqCst),
            status,
            order_id: order["id"].as_i64(),
        });
    }

    /// Two WeChat orders paid while their notifications are held: one reaches its expiry, one
    /// is cancelled by its buyer; each close must find the payment and keep the order paid.
    /// Then the held notifications arrive, late. Returns what each ended as.
    pub async fn closes_after_payments(&self, db: &DatabaseConnection) -> String {
        let buyer = self.buyers[self.phase.load(Ordering::SeqCst)][0];
        let token = self.keys.issue(buyer, Role::User, 7200);
        self.emulator(
            "/emulator/notify-mode",
            json!({"provider": "wechat", "mode": "hold"}),
        )
        .await;
        let mut orders = Vec::new();
        for k in 0..2 {
            let (status, order) = self.purchase(buyer, "wechat", k).await;
            let Some(order) = order.filter(|_| status == 201) else {
                continue;
            };
            self.pay("wechat", order["order_no"].as_str().unwrap_or_default())
                .await;
            self.record(order.clone(), status);
            orders.push(order["id"].as_i64().unwrap_or_default());
        }
        let mut note = Vec::new();
        if let [expiring, cancelled] = orders[..] {
            let _ = db
                .execute_unprepared(&format!(
                    "UPDATE orders SET expires_at = now() - interval '1 second', \
                     payment_check_at = now() WHERE id = {expiring}"
                ))
                .await;
            let cancel = self
                .http
                .post(format!("{}/v1/orders/{cancelled}/cancel", base(1)))
                .bearer_auth(&token)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            note.push(format!("cancel answered {cancel}"));
            let deadline = Instant::now() + Duration::from_secs(60);
            let status_of = |id: i64| {
                let (http, token) = (&self.http, &token);
                async move {
                    let o: Value = http
                        .get(format!("{}/v1/orders/{id}", base(0)))
                        .bearer_auth(token)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    o["status"].as_str().map(str::to_owned)
                }
            };
            while Instant::now() < deadline
                && status_of(expiring).await.as_deref() == Some("pending_payment")
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            note.push(format!(
                "expired one: {}, cancelled one: {}",
                status_of(expiring).await.unwrap_or_default(),
                status_of(cancelled).await.unwrap_or_default()
            ));
        }
        let released = self
            .emulator("/emulator/release", json!({"provider": "wechat"}))
            .await;
        self.emulator(
            "/emulator/notify-mode",
            json!({"provider": "wechat", "mode": "deliver"}),
        )
        .await;
        note.push(format!(
            "{} held notifications released",
            released["released"]
        ));
        note.join("; ")
    }
}
