//! One reader of buyers' orders per gateway instance: every order stream of the instance
//! ([`crate::http::push::buyer`]) follows its order here instead of reading the database itself,
//! so a thousand sockets on one order cost what one does.
//!
//! An order is read when its first socket joins, when a push for its buyer comes (the notifier
//! pushes after each effect commits), when the instance fell behind the pushes, and every
//! `push.feed_poll_ms` while it is *moving*: waiting for payment, paid and waiting for its
//! membership, or waiting for its refund. The reads of one turn are one query, whatever their
//! number. A paid order whose membership stands is *resting*: only a refund or a revocation
//! changes it, and both push, so it is read on its buyer's pushes only. A closed or refunded
//! order is *final*: nothing the buyer sees can change, and it is never read again.
//!
//! Sockets are counted here too: at most `push.buyer_streams_max` on the instance and
//! `push.buyer_streams_per_buyer` per buyer, so that sockets cannot crowd out purchases.

use crate::hub::Pushed;
use crate::membership::{MembershipView, membership_at};
use axum::extract::ws::Utf8Bytes;
use chrono::Utc;
use memberline_platform::metrics::Metrics;
use memberline_schema::entities::{membership_period, order};
use memberline_schema::ids::{BuyerId, OrderId};
use memberline_schema::push::Route;
use memberline_schema::states::OrderStatus;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// What a buyer sees of an order at one read.
#[derive(Clone, Debug)]
pub struct View {
    /// `{type: "order.status", order_id, order_no, status, at, membership?}`, rendered once
    /// for every socket.
    pub message: Utf8Bytes,
    status: OrderStatus,
    /// What the buyer sees change: the status and the membership (not the time stamp).
    pub seen: (OrderStatus, Value),
}

impl View {
    fn of(order: &order::Model, periods: Option<&[membership_period::Model]>) -> Self {
        let mut message = json!({
            "type": "order.status",
            "order_id": order.id,
            "order_no": order.order_no,
            "status": order.status,
            "at": order.updated_at,
        });
        if let Some(periods) = periods {
            let MembershipView {
                status,
                expires_at,
                permanent,
                ..
            } = membership_at(periods, Utc::now());
            message["membership"] = json!({
                "status": status,
                "expires_at": expires_at,
                "permanent": permanent,
            });
        }
        Self {
            seen: (order.status, message["membership"].clone()),
            status: order.status,
            message: message.to_string().into(),
        }
    }

    /// Read on the poll (see the module's text).
    fn moving(&self) -> bool {
        match self.status {
            OrderStatus::Paid => self.seen.1.is_null(),
            status => !status.is_final(),
        }
    }
}

/// Why a socket may not join.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// The instance holds `push.buyer_streams_max` order streams.
    Instance,
    /// This buyer holds `push.buyer_streams_per_buyer` on this instance.
    Buyer,
}

struct Watched {
    buyer: BuyerId,
    view: watch::Sender<Option<View>>,
    sockets: usize,
}

#[derive(Default)]
struct Book {
    orders: HashMap<OrderId, Watched>,
    per_buyer: HashMap<BuyerId, usize>,
    sockets: usize,
    /// Orders joined and not read yet.
    fresh: Vec<OrderId>,
}

/// The instance's order watcher: [`OrderWatch::join`] for each socket, [`OrderWatch::run`] once.
#[derive(Clone)]
pub struct OrderWatch {
    book: Arc<Mutex<Book>>,
    metrics: Arc<Metrics>,
    joined: Arc<Notify>,
    max: usize,
    per_buyer: usize,
}

/// One socket's place: the order's views, and its count, given back when dropped.
pub struct Watcher {
    pub views: watch::Receiver<Option<View>>,
    watch: OrderWatch,
    order: OrderId,
    buyer: BuyerId,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut book = self.watch.lock();
        book.sockets -= 1;
        self.watch.metrics.set_order_streams(book.sockets);
        if let Some(n) = book.per_buyer.get_mut(&self.buyer) {
            *n -= 1;
            if *n == 0 {
                book.per_buyer.remove(&self.buyer);
            }
        }
        if let Some(watched) = book.orders.get_mut(&self.order) {
            watched.sockets -= 1;
            if watched.sockets == 0 {
                book.orders.remove(&self.order);
            }
        }
    }
}

impl OrderWatch {
    pub fn new(max: usize, per_buyer: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            book: Arc::default(),
            metrics,
            joined: Arc::default(),
            max,
            per_buyer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Order streams open on this instance.
    pub fn sockets(&self) -> usize {
        self.lock().sockets
    }

    /// A place for one socket on `order` of `buyer`, within the caps.
    pub fn join(&self, order: OrderId, buyer: BuyerId) -> Result<Watcher, Full> {
        let mut book = self.lock();
        if book.sockets >= self.max {
            return Err(Full::Instance);
        }
        let mine = book.per_buyer.entry(buyer).or_default();
        if *mine >= self.per_buyer {
            return Err(Full::Buyer);
        }
        *mine += 1;
        book.sockets += 1;
        self.metrics.set_order_streams(book.sockets);
        let mut fresh = false;
        let watched = book.orders.entry(order).or_insert_with(|| {
            fresh = true;
            Watched {
                buyer,
                view: watch::channel(None).0,
                sockets: 0,
            }
        });
        watched.sockets += 1;
        let views = watched.view.subscribe();
        if fresh {
            book.fresh.push(order);
            self.joined.notify_one();
        }
        Ok(Watcher {
            views,
            watch: self.clone(),
            order,
            buyer,
        })
    }

    /// The orders to read when `why` comes.
    fn due(&self, why: Why) -> Vec<OrderId> {
        let mut book = self.lock();
        if let Why::Joined = why {
            return std::mem::take(&mut book.fresh);
        }
        book.orders
            .iter()
            .filter(|(_, w)| {
                let view = w.view.borrow();
                let finished = view.as_ref().is_some_and(|v| v.status.is_final());
                match why {
                    Why::Joined => false,
                    // Never read yet (a failed read) or moving.
                    Why::Poll => view.as_ref().is_none_or(View::moving),
                    Why::Pushed(buyer) => w.buyer == buyer && !finished,
                    Why::Lagged => !finished,
                }
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Publishes what was read to the orders' sockets, when the buyer would see a change.
    fn publish(&self, views: Vec<(OrderId, View)>) {
        let book = self.lock();
        for (id, view) in views {
            if let Some(watched) = book.orders.get(&id) {
                watched.view.send_if_modified(|now| {
                    let changed = now.as_ref().is_none_or(|v| v.seen != view.seen);
                    if changed {
                        *now = Some(view);
                    }
                    changed
                });
            }
        }
    }

    /// Reads the watched orders as the module's text says until `shutdown`; a failed read is
    /// tried again at the next tick.
    pub async fn run(
        self,
        db: DatabaseConnection,
        mut pushes: broadcast::Receiver<Arc<Pushed>>,
        poll: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.joined.notified() => Why::Joined,
                _ = tick.tick() => Why::Poll,
                pushed = pushes.recv() => match pushed {
                    Ok(p) => match Route::parse(&p.routing_key) {
                        Some(Route::Buyer(buyer)) => Why::Pushed(buyer),
                        _ => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => Why::Lagged,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let due = self.due(why);
            if due.is_empty() {
                continue;
            }
            for due in due.chunks(READ_AT_ONCE) {
                self.metrics.order_watch_read();
                let read = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    read = read(&db, due) => read,
                };
                match read {
                    Ok(views) => self.publish(views),
                    Err(e) => {
                        debug!(error = %e, orders = due.len(), "Reading watched orders failed; the next tick tries again");
                        break;
                    }
                }
            }
        }
    }
}

/// Orders read in one query at most.
const READ_AT_ONCE: usize = 1000;

#[derive(Clone, Copy)]
enum Why {
    Joined,
    Poll,
    Pushed(BuyerId),
    Lagged,
}

/// `ids` as their buyers see them, in two queries: the orders, and the standing periods of
/// their buyers (an order shows its buyer's membership once a period of its own stands).
async fn read(db: &DatabaseConnection, ids: &[OrderId]) -> Result<Vec<(OrderId, View)>, DbErr> {
    let orders = order::Entity::find()
        .filter(order::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await?;
    let buyers: Vec<BuyerId> = orders.iter().map(|o| o.buyer_id).collect();
    let mut periods: HashMap<BuyerId, Vec<membership_period::Model>> = HashMap::new();
    for period in membership_period::Entity::find()
        .filter(membership_period::Column::UserId.is_in(buyers))
        .filter(membership_period::Column::RemovedAt.is_null())
        .all(db)
        .await?
    {
        periods.entry(period.user_id).or_default().push(period);
    }
    Ok(orders
        .iter()
        .map(|o| {
            let theirs = periods.get(&o.buyer_id).map(Vec::as_slice).unwrap_or(&[]);
            let extended = theirs.iter().any(|p| p.order_id == o.id);
            (o.id, View::of(o, extended.then_some(theirs)))
        })
        .collect())
}
