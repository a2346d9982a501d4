//! Looking at dead letters never loses them: listing walks the queue and puts back confirmed
//! copies, so no message gathers delivery attempts (RabbitMQ 4.x drops a quorum-queue message
//! handed back 20 times).

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use memberline_gateway::http::auth::Role;
use memberline_schema::topology::Worker;
use memberline_tests::{Options, broker_channel, eventually, spawn_app_with};
use std::time::Duration;

#[tokio::test]
async fn listing_the_same_dead_letters_fifty_times_keeps_every_one_without_delivery_attempts() {
    let app = spawn_app_with(Options {
        workers: true,
        ..Default::default()
    })
    .await;
    // Three undecodable messages: each of the four workers dead-letters each one.
    for i in 0..3 {
        app.publish_event("order.paid.v1", format!("poison {i}").as_bytes())
            .await;
    }
    let dead = app.topology.dead_queue(Worker::Ledger);
    eventually("parked", Duration::from_secs(20), || async {
        (app.queue_len(&dead).await == 3).then_some(())
    })
    .await;

    let admin = app.token(0, Role::Admin);
    let first = app
        .get(Some(&admin), "/v1/admin/dead-letters?worker=ledger")
        .await
        .1;
    for _ in 0..49 {
        let (status, list) = app
            .get(Some(&admin), "/v1/admin/dead-letters?worker=ledger")
            .await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(
            list["dead_letters"], first["dead_letters"],
            "same letters, same order"
        );
    }
    assert_eq!(first["dead_letters"].as_array().unwrap().len(), 3);
    assert_eq!(app.queue_len(&dead).await, 3, "all still there");

    // Read them raw: none was ever handed back, so the broker counted no delivery attempt.
    let ch = broker_channel().await;
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            dead.as_str().into(),
            "peek-check".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("a dead letter")
            .expect("stream open")
            .expect("delivery");
        let count = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        assert!(
            matches!(
                count,
                None | Some(AMQPValue::LongLongInt(0)) | Some(AMQPValue::LongInt(0))
            ),
            "no delivery attempts after 50 listings: {count:?}"
        );
        assert!(!delivery.redelivered, "never handed back");
    }
    // The consumer's unacknowledged messages go back when the channel closes (test cleanup).
}
