//! Checkout with a payment provider, by one of its channels: WeChat Native, JSAPI or H5; Alipay
//! precreate, mobile or desktop cashier.
//!
//! 1. One transaction commits the order as `pending_payment` with its `expires_at` and channel,
//!    claims the idempotency key and links it to the order.
//! 2. The provider is called outside any transaction (a slow provider holds no lock and no
//!    connection).
//! 3. A second transaction stores what the buyer pays with (a code, JSAPI's signed arguments, a
//!    cashier URL) with the order, and the response for replays. If the
//!    provider failed, it closes the order instead and releases the key: nothing is charged and
//!    nothing is left pending.
//!
//! A replay of the same key returns the stored response; a replay that finds the order committed
//! but no answer stored (the first request still at the provider, or cut off there) asks the
//! provider again for the SAME `out_trade_no` and parameters, which returns the same trade: there
//! is never a second provider order.

use crate::place::{Pending, charge, check_eligibility, insert_order, lock_buyer};
use crate::providers::{Offer, PaymentRequest, Payments, Via};
use crate::store::{self, transitions};
use crate::{OrderError, OrderView, PlaceOrder};
use chrono::{Duration, Utc};
use memberline_platform::idempotency::{self, Answer, Claim};
use memberline_platform::settings::PaymentSettings;
use memberline_schema::entities::order;
use memberline_schema::states::{OrderStatus, PayChannel, PayMethod, WechatApp};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};

/// How the buyer asked to pay a provider order (`channel` and `wechat_app` of `POST /v1/orders`),
/// and from where.
#[derive(Clone, Debug, Default)]
pub struct ChannelChoice {
    /// `None`: the provider's QR code (WeChat `native`, Alipay `qr`).
    pub channel: Option<PayChannel>,
    /// The app a JSAPI payment is made in (required with `jsapi`, refused with the others).
    pub wechat_app: Option<WechatApp>,
    /// The buyer's address, which WeChat H5 must be told.
    pub client_ip: String,
}

/// The offer `cmd` asks for, when the shop takes it.
fn offer(payments: &Payments, cmd: &PlaceOrder) -> Result<Offer, OrderError> {
    let provider = cmd.pay_method.provider().ok_or(OrderError::InvalidChannel(
        "channel and wechat_app are only for wechat and alipay orders",
    ))?;
    let choice = &cmd.channel;
    let channel = choice
        .channel
        .unwrap_or_else(|| PayChannel::default_for(provider));
    if channel.provider() != provider {
        return Err(OrderError::InvalidChannel(
            "the channel is another provider's: wechat takes native, jsapi and h5; alipay takes \
             qr, wap and page",
        ));
    }
    match (channel, choice.wechat_app) {
        (PayChannel::Jsapi, None) => {
            return Err(OrderError::InvalidChannel(
                "channel jsapi needs wechat_app: miniprogram or official_account",
            ));
        }
        (PayChannel::Jsapi, Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return Err(OrderError::InvalidChannel(
                "wechat_app is only for channel jsapi",
            ));
        }
    }
    let offer = Offer {
        pay_method: cmd.pay_method,
        channel,
        wechat_app: choice.wechat_app,
    };
    let comes_back = matches!(channel, PayChannel::H5 | PayChannel::Wap | PayChannel::Page);
    if !payments.takes(offer) || (comes_back && payments.public_url().is_none()) {
        let what = match offer.wechat_app {
            Some(app) => format!("{channel} in the WeChat {app}"),
            None => channel.to_string(),
        };
        return Err(OrderError::ChannelUnavailable(format!(
            "this shop does not take {} by {what}",
            cmd.pay_method
        )));
    }
    Ok(offer)
}

/// The WeChat app id the offer's trade is created under (JSAPI: the app's own; Native and H5:
/// `payments.wechat.appid`), kept with the order: its payment must carry that one, whatever the
/// settings say by then. `None` for Alipay, which has one app.
fn app_id(payments: &Payments, offer: Offer) -> Option<String> {
    match offer.wechat_app {
        Some(app) => payments.app_id(app).map(str::to_owned),
        None if offer.pay_method == PayMethod::Wechat => {
            payments.wechat().map(|w| w.appid().to_owned())
        }
        None => None,
    }
}

/// What the provider needs to create the trade of `order` by its channel. [`offer`] and
/// [`start`] made sure it has all of it: what is missing here is a bug, not the buyer's.
fn via(
    payments: &Payments,
    order: &order::Model,
    openid: Option<String>,
    client_ip: &str,
) -> anyhow::Result<Via> {
    let no_public_url = || anyhow::anyhow!("a cashier channel without payments.public_url");
    let back_to_order = || {
        payments
            .public_url()
            .map(|_| payments.order_page(Some(order.id)))
            .ok_or_else(no_public_url)
    };
    let alipay_return = || payments.alipay_return_url().ok_or_else(no_public_url);
    Ok(match order.channel {
        None | Some(PayChannel::Native | PayChannel::Qr) => Via::Qr,
        Some(PayChannel::Jsapi) => Via::Jsapi {
            app_id: order
                .channel_app_id
                .clone()
                .ok_or_else(|| anyhow::anyhow!("JSAPI order {} without its app id", order.id))?,
            openid: openid
                .ok_or_else(|| anyhow::anyhow!("JSAPI order {} without an OpenID", order.id))?,
        },
        Some(PayChannel::H5) => Via::H5 {
            client_ip: client_ip.to_owned(),
            redirect_url: back_to_order()?,
        },
        Some(PayChannel::Wap) => Via::Wap {
            return_url: alipay_return()?,
            quit_url: back_to_order()?,
        },
        Some(PayChannel::Page) => Via::Page {
            return_url: alipay_return()?,
        },
    })
}

/// How long a provider order may stay pending, and when its provider is first asked about it
/// (`payments.order_ttl_secs`, `payments.reconcile_after_secs`).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: Duration,
    pub reconcile_after: Duration,
}

impl From<&PaymentSettings> for Timing {
    fn from(p: &PaymentSettings) -> Self {
        let secs = |s: u64| Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX));
        Self {
            ttl: secs(p.order_ttl_secs),
            reconcile_after: secs(p.reconcile_after_secs),
        }
    }
}

/// Places a provider order and fetches its code. See the module docs.
pub async fn checkout(
    db: &DatabaseConnection,
    payments: &Payments,
    timing: Timing,
    cmd: &PlaceOrder,
) -> Result<Answer, OrderError> {
    let provider = cmd
        .pay_method
        .provider()
        .ok_or(OrderError::PayMethodUnavailable(cmd.pay_method))?;
    let client = payments
        .get(provider)
        .ok_or(OrderError::PayMethodUnavailable(cmd.pay_method))?;
    let offer = offer(payments, cmd)?;

    let txn = db.begin().await?;
    let (order, openid) = match start(&txn, payments, offer, cmd, timing).await {
        Ok(Started::Order(order, openid)) => {
            txn.commit().await?;
            (*order, openid)
        }
        other => {
            if let Err(e) = txn.rollback().await {
                tracing::warn!(error = %e, "rollback failed; the connection will be discarded");
            }
            return match other? {
                Started::Replay(answer) => Ok(answer),
                Started::Order(..) => unreachable!("handled above"),
            };
        }
    };

    let request = PaymentRequest {
        out_trade_no: order.order_no.clone(),
        description: order.plan_name.clone(),
        amount_fen: order.amount_fen,
        expires_at: order
            .expires_at
            .ok_or_else(|| anyhow::anyhow!("pending order {} without expires_at", order.id))?,
        via: via(payments, &order, openid, &cmd.channel.client_ip)?,
    };
    match client.create(&request).await {
        Ok(started) => {
            let txn = db.begin().await?;
            let payload = serde_json::to_value(&started).map_err(anyhow::Error::from)?;
            if !store::orders::store_code(&txn, order.id, &payload).await? {
                // Cancelled (or expired) while the provider was answering: the code must not
                // reach the buyer, whose payment would only be refunded.
                txn.rollback().await?;
                let now = store::orders::find(db, order.id)
                    .await?
                    .map_or(OrderStatus::Closed, |o| o.status);
                return Err(OrderError::NotPending(now));
            }
            let order = order::Model {
                provider_payload: Some(payload),
                ..order
            };
            let body = serde_json::to_value(OrderView::from(order)).map_err(anyhow::Error::from)?;
            let answer = Answer::fresh(201, body);
            idempotency::store(&txn, cmd.key(), &answer).await?;
            txn.commit().await?;
            Ok(answer)
        }
        Err(e) => {
            tracing::warn!(
                order_id = %order.id, provider = %provider, error = %e,
                "Provider refused or failed to create the payment; closing the order"
            );
            let txn = db.begin().await?;
            transitions::advance(
                &txn,
                order.id,
                OrderStatus::PendingPayment,
                OrderStatus::Closed,
                "provider_unavailable",
                Utc::now(),
            )
            .await?;
            // Released, so the buyer can try again with the same key.
            idempotency::release(&txn, cmd.key()).await?;
            txn.commit().await?;
            Err(OrderError::ProviderUnavailable(e.kind()))
        }
    }
}

enum Started {
    /// The pending order to create the trade of (new, or committed by an earlier copy), with
    /// the buyer's OpenID when it is paid by JSAPI.
    Order(Box<order::Model>, Option<String>),
    /// The earlier copy's stored answer.
    Replay(Answer),
}

async fn start(
    txn: &DatabaseTransaction,
    payments: &Payments,
    offer: Offer,
    cmd: &PlaceOrder,
    timing: Timing,
) -> Result<Started, OrderError> {
    let buyer = lock_buyer(txn, cmd.buyer_id).await?;
    let app_id = app_id(payments, offer);
    let openid = match (offer.channel, &app_id) {
        (PayChannel::Jsapi, Some(app_id)) => Some(
            store::catalogue::wechat_openid(txn, buyer.id, app_id)
                .await?
                .ok_or(OrderError::WechatIdentityRequired)?,
        ),
        _ => None,
    };
    match idempotency::claim(txn, cmd.key()).await? {
        Claim::Claimed => {}
        Claim::Replay(answer) => return Ok(Started::Replay(answer)),
        Claim::InFlight { order_id } => {
            let order = match order_id {
                Some(id) => store::orders::find(txn, id).await?,
                None => None,
            }
            .ok_or_else(|| anyhow::anyhow!("idempotency key without its order"))?;
            if order.status != OrderStatus::PendingPayment {
                return Err(OrderError::NotPending(order.status));
            }
            return Ok(Started::Order(Box::new(order), openid));
        }
    }
    let plan = store::catalogue::plan(txn, cmd.plan_id)
        .await?
        .filter(|p| p.on_shelf)
        .ok_or(OrderError::PlanNotFound(cmd.plan_id))?;
    crate::rules::offered(&plan, cmd.pay_method, Some(offer.channel))?;
    check_eligibility(txn, &buyer, &plan, cmd.pay_method).await?;
    let charge = charge(txn, &buyer, &plan, cmd.pay_method, cmd.expected).await?;
    if charge.fen <= 0 {
        return Err(OrderError::PayMethodNotAllowed(
            "nothing to pay: take this plan with pay_method `free`",
        ));
    }
    let now = Utc::now();
    let pending = Pending {
        until: now + timing.ttl,
        check_at: (now + timing.reconcile_after).min(now + timing.ttl),
        channel: offer.channel,
        app_id,
    };
    let order = insert_order(txn, cmd, &buyer, &plan, charge, now, Some(pending)).await?;
    transitions::record(
        txn,
        order.id,
        None,
        OrderStatus::PendingPayment,
        &format!("checkout_{}", cmd.pay_method),
        now,
    )
    .await?;
    idempotency::link(txn, cmd.key(), order.id).await?;
    Ok(Started::Order(Box::new(order), openid))
}
