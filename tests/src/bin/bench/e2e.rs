//! End to end: what the database and the broker say about a run with every worker running.

use crate::load::Run;
use memberline_tests::{TestDb, broker_channel};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::time::{Duration, Instant};

/// Waits until every order has its four effects (consumed `order.paid` events); how long it
/// took.
pub async fn wait_for_effects(db: &TestDb, limit: Duration) -> Duration {
    let started = Instant::now();
    memberline_tests::eventually("every effect applied", limit, || async {
        let row = db
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT (SELECT count(*) FROM orders) * 4 \
                      - (SELECT count(*) FROM consumed_events WHERE event_type = 'order.paid') \
                        AS missing",
            ))
            .await
            .ok()??;
        (row.try_get::<i64>("", "missing").ok()? == 0).then_some(())
    })
    .await;
    started.elapsed()
}

/// Waits until every event in the outbox was published and consumed by every worker bound to
/// it (the follow-ups too, such as `membership.extended`), so that the next run starts with
/// empty queues.
pub async fn wait_until_settled(db: &TestDb, limit: Duration) {
    memberline_tests::eventually("every event consumed", limit, || async {
        let rows = db
            .conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT x.routing_key, count(*) AS events, \
                        sum((SELECT count(*) FROM consumed_events c WHERE c.event_id = x.id))::bigint \
                          AS consumed \
                 FROM outbox x GROUP BY x.routing_key",
            ))
            .await
            .ok()?;
        for row in rows {
            let key: String = row.try_get("", "routing_key").ok()?;
            let events: i64 = row.try_get("", "events").ok()?;
            let consumed: i64 = row.try_get("", "consumed").ok()?;
            let bound = memberline_schema::topology::Worker::ALL
                .into_iter()
                .filter(|w| w.bindings().contains(&key.as_str()))
                .count() as i64;
            if consumed < events * bound {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// `VACUUM ANALYZE` of the whole database.
pub async fn vacuum(db: &TestDb) {
    db.conn
        .execute_unprepared("VACUUM ANALYZE")
        .await
        .expect("vacuum");
}

/// Per order of `run`, milliseconds from its POST to the last of its four effects (sorted),
/// and effects per second over the whole window.
pub async fn end_to_end(db: &TestDb, run: &Run) -> (Vec<f64>, f64) {
    let rows = db
        .conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT x.aggregate_id::bigint AS order_id, \
                    (EXTRACT(EPOCH FROM max(c.consumed_at)) * 1000)::float8 AS done_ms, \
                    count(*) AS n \
             FROM outbox x JOIN consumed_events c ON c.event_id = x.id \
             WHERE x.event_type = 'order.paid' GROUP BY x.aggregate_id",
        ))
        .await
        .unwrap();
    let done: std::collections::HashMap<i64, (f64, i64)> = rows
        .into_iter()
        .map(|r| {
            let id: i64 = r.try_get("", "order_id").unwrap();
            let ms: f64 = r.try_get("", "done_ms").unwrap_or(f64::NAN);
            (id, (ms, r.try_get("", "n").unwrap()))
        })
        .collect();
    let mut first = f64::MAX;
    let mut last = 0.0f64;
    let mut latencies: Vec<f64> = run
        .samples
        .iter()
        .filter_map(|s| {
            let (done_ms, n) = done.get(&s.order_id?)?;
            (*n == 4).then(|| {
                first = first.min(s.sent_unix_ms);
                last = last.max(*done_ms);
                done_ms - s.sent_unix_ms
            })
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let effects_rate = latencies.len() as f64 * 4.0 / ((last - first) / 1000.0).max(0.001);
    (latencies, effects_rate)
}

/// Outbox rows not published yet.
pub async fn unpublished(db: &TestDb) -> i64 {
    let row = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

/// Messages ready in the four work queues (not those delivered and not yet acknowledged).
pub async fn queue_depths(topology: &memberline_schema::topology::Topology) -> u64 {
    let ch = broker_channel().await;
    let mut total = 0;
    for worker in memberline_schema::topology::Worker::ALL {
        if let Ok(q) = ch
            .queue_declare(
                topology.work_queue(worker).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
        {
            total += q.message_count() as u64;
        }
    }
    total
}
