//! A RabbitMQ delivery's body through everything a worker does with it before its transaction:
//! the runtime's decode (JSON, then the envelope's head), the dead-letter reason of one that
//! does not decode, each worker's `claims_itself` and `batch_key`, and the handlers' decoding
//! of the whole envelope into every event type (`order_paid` included). The input is the body,
//! verbatim (no start line or headers: a delivery's body is all a sender controls that is read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memberline_fuzz::settings;
use memberline_schema::events::{
    Event, LatePaymentRefunded, LevelChanged, MembershipChanged, MembershipExtended,
    MembershipRevoked, OrderClosed, OrderPaid, OrderRefunded, OrderReminded,
};
use memberline_schema::topology::Worker;
use memberline_workers::handlers::{decode as decode_payload, order_paid};
use memberline_workers::runtime::Handler;
use memberline_workers::runtime::Incoming;
use memberline_workers::runtime::delivery::fuzzing::{decode, truncate};
use std::sync::{Arc, OnceLock};

fn handlers() -> &'static [Arc<dyn Handler>] {
    static HANDLERS: OnceLock<Vec<Arc<dyn Handler>>> = OnceLock::new();
    HANDLERS.get_or_init(|| {
        Worker::ALL
            .iter()
            .map(|&w| memberline_workers::handler_for(w, settings()).expect("a handler"))
            .collect()
    })
}

/// What a handler of `P` does first; a payload of another shape is a permanent error, whose
/// text becomes the dead letter's `x-last-error`.
fn payload<P: Event>(msg: &Incoming) {
    match decode_payload::<P>(msg) {
        Ok(envelope) => {
            let _ = (envelope.routing_key(), envelope.payload.aggregate_id());
        }
        Err(e) => {
            let _ = truncate(&e.to_string(), 1000);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let msg = match decode(data, 0) {
        Ok(msg) => msg,
        Err(reason) => {
            let _ = truncate(&reason, 1000);
            return;
        }
    };
    let _ = (msg.head.kind(), msg.head.is::<OrderPaid>());
    for handler in handlers() {
        let _ = (handler.claims_itself(&msg), handler.batch_key(&msg));
    }
    let _ = order_paid(&msg);
    payload::<OrderPaid>(&msg);
    payload::<MembershipExtended>(&msg);
    payload::<LevelChanged>(&msg);
    payload::<OrderClosed>(&msg);
    payload::<LatePaymentRefunded>(&msg);
    payload::<OrderRefunded>(&msg);
    payload::<MembershipChanged>(&msg);
    payload::<MembershipRevoked>(&msg);
    payload::<OrderReminded>(&msg);
});
