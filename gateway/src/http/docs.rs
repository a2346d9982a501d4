//! The OpenAPI document, generated from the handlers' annotations, and a self-contained page
//! that renders it (no CDN: the page works offline).

use crate::state::AppState;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Memberline API", description = "Member plans, orders and payments. Amounts are integers in fen; points are integers. Errors are `{\"error\": {\"code\", \"message\"}}`. Besides the answers each operation lists, any request may be cut off with 408 after the request timeout, answered 503 `overloaded` with `Retry-After` at once when the gateway already works on `http.max_in_flight` requests (nothing is done), and an unexpected failure is an opaque 500 `internal`."),
    paths(
        super::plans::list,
        super::sign_in::staff,
        super::sign_in::wechat,
        super::sign_in::link,
        super::me::me,
        super::me::ledger,
        super::orders::create,
        super::orders::list,
        super::orders::get_one,
        super::orders::cancel,
        super::orders::remind,
        super::payments::qr_png,
        super::payments::alipay_return,
        super::payments::wechat_notify,
        super::payments::alipay_notify,
        super::admin::create_user,
        super::admin_actions::refund_order,
        super::admin_actions::grant_membership,
        super::admin_actions::revoke_membership,
        super::admin_actions::audit,
        super::catalogue::list_plans,
        super::catalogue::create_plan,
        super::catalogue::update_plan,
        super::catalogue::remove_plan,
        super::catalogue::list_levels,
        super::catalogue::create_level,
        super::catalogue::update_level,
        super::catalogue::remove_level,
        super::members::search,
        super::members::detail,
        super::members::update,
        super::members::adjust,
        crate::http::push::merchant::stream,
        super::merchant::orders,
        super::merchant::search,
        super::merchant::detail,
        super::exports::orders_csv,
        super::exports::ledger_csv,
        super::stats::stats,
        crate::http::push::tickets::merchant_ticket,
        crate::http::push::buyer::stream,
        crate::http::push::tickets::my_ticket,
        super::admin::dead_letters,
        super::admin::replay_dead_letters,
        super::outbox::quarantined,
        super::outbox::release,
        super::me::notifications,
        super::me::mark_read,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
    ),
    components(schemas(crate::http::error::ErrorBody, crate::http::error::ErrorDetail)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// A page listing every operation of `/openapi.json` with its parameters, body and responses.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use memberline_schema::states::{
        EventType, LedgerKind, LedgerReason, NotificationKind, OrderStatus, PayChannel, PayMethod,
        PlanKind, WechatApp,
    };

    #[test]
    fn documented_enum_values_are_what_serde_writes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let documented = |name: &str| doc["components"]["schemas"][name]["enum"].clone();
        let serialized = [
            ("EventType", serde_json::json!(EventType::ALL)),
            ("OrderStatus", serde_json::json!(OrderStatus::ALL)),
            ("PayMethod", serde_json::json!(PayMethod::ALL)),
            ("PlanKind", serde_json::json!(PlanKind::ALL)),
            ("LedgerKind", serde_json::json!(LedgerKind::ALL)),
            ("LedgerReason", serde_json::json!(LedgerReason::ALL)),
            ("NotificationKind", serde_json::json!(NotificationKind::ALL)),
            ("PayChannel", serde_json::json!(PayChannel::ALL)),
            ("WechatApp", serde_json::json!(WechatApp::ALL)),
        ];
        for (name, values) in serialized {
            assert_eq!(documented(name), values, "{name}");
        }
    }
}
