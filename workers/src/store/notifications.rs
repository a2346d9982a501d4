//! `notifications`: the buyer's inbox, one message per event, user and kind
//! (`UNIQUE (event_id, user_id, kind)`). Reading and marking messages read is the gateway's.

use super::insert_once;
use memberline_schema::ids::{BuyerId, EventId, OrderId};
use memberline_schema::states::NotificationKind;
use sea_orm::{DatabaseTransaction, DbErr};

/// One inbox message.
#[derive(Clone, Copy, Debug)]
pub struct Note<'a> {
    pub user_id: BuyerId,
    /// The event the message is about; with `user_id` and `kind`, its business key.
    pub event_id: EventId,
    pub kind: NotificationKind,
    pub title: &'a str,
    pub body: &'a str,
    pub order_id: Option<OrderId>,
}

/// The insert of a note (`$1`–`$6`, as [`Note::values`] gives them), returning its id when new.
const INSERT_NOTE: &str = "INSERT INTO notifications (user_id, event_id, kind, title, body, order_id) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (event_id, user_id, kind) DO NOTHING RETURNING id";

impl Note<'_> {
    /// `$1`–`$6` of [`INSERT_NOTE`].
    fn values(self) -> Vec<sea_orm::Value> {
        vec![
            self.user_id.into(),
            self.event_id.into(),
            self.kind.as_str().into(),
            self.title.into(),
            self.body.into(),
            self.order_id.into(),
        ]
    }
}

/// Puts `note` in the buyer's inbox; `false` when this event already left that message.
pub async fn add(txn: &DatabaseTransaction, note: Note<'_>) -> Result<bool, DbErr> {
    insert_once(txn, INSERT_NOTE, note.values()).await
}

/// [`INSERT_NOTE`], and the channel message (`$7` its id, `$8` its payload) when the note is new.
static WITH_MESSAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH n AS ({INSERT_NOTE}), m AS ( \
             INSERT INTO channel_deliveries (message_id, user_id, kind, payload) \
             SELECT $7, $1, $3, $8 FROM n ON CONFLICT (message_id) DO NOTHING \
         ) \
         SELECT id FROM n"
    )
});

/// [`add`], and when the note is new, the same text recorded as channel message `message_id`
/// for the sender (a `channel_deliveries` row, which the sender claims and sends), in one
/// statement; `false` when this event already left that note (nothing written).
pub async fn add_with_message(
    txn: &DatabaseTransaction,
    note: Note<'_>,
    message_id: &str,
    payload: serde_json::Value,
) -> Result<bool, DbErr> {
    let mut values = note.values();
    values.extend([message_id.into(), payload.into()]);
    insert_once(txn, &WITH_MESSAGE, values).await
}
